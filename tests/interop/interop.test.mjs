// Interoperability test: the real npm `bittorrent-tracker` WebSocket client (the code every
// browser runs inside WebTorrent / P2P Media Loader), with real WebRTC from @roamhq/wrtc,
// against the p2p-mediastream tracker.
//
//   node --test --test-reporter=spec interop.test.mjs      (or ./run.sh)
//
// Environment:
//   P2P_MEDIASTREAM_BIN  tracker binary to spawn (default ../../target/debug/p2p-mediastream,
//                        relative to this file); it is started on 127.0.0.1 with an OS-chosen port
//   TRACKER_URL          ws://host:port/announce of an already running tracker (nothing is spawned)
//   EXPECT_INTERVAL      announce interval the tracker must report (default 120)
//   INTEROP_REFERENCE=1  the tracker is bittorrent-tracker's own server: where it differs from
//                        ours (a bare `failure reason` without `action` for invalid input) the
//                        cases are reported as TODO, not failures
//   INTEROP_STEP_TIMEOUT_MS  bound on every single wait (default 15000; WebRTC connect gets 2x)
//   INTEROP_SERVER_START_TIMEOUT_MS  bound on the server's "listening on" line (default 30000)
//
// Case f also starts a nats-server (Debian package nats-server, on PATH or in /usr/sbin) on a
// free loopback port and two more instances clustered through it; it is skipped with
// TRACKER_URL.

import { test, before, after, beforeEach } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import net from 'node:net'
import { register } from 'node:module'
import { randomBytes, randomInt } from 'node:crypto'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import WebSocket from 'ws'

// bittorrent-tracker's client gets RTCPeerConnection from the `webrtc-polyfill` package
// (node-datachannel, not installable offline); resolve it to @roamhq/wrtc instead.
// See webrtc-shim/hooks.mjs. The client must therefore be imported after register().
register('./webrtc-shim/hooks.mjs', import.meta.url)
const { default: Client } = await import('bittorrent-tracker/client')
const { default: wrtc } = await import('./webrtc-shim/webrtc-polyfill.mjs')

const HERE = path.dirname(fileURLToPath(import.meta.url))
const REPO = path.resolve(HERE, '../..')
const STEP_MS = Number(process.env.INTEROP_STEP_TIMEOUT_MS || 15000)
const CONNECT_MS = 2 * STEP_MS
const START_MS = Number(process.env.INTEROP_SERVER_START_TIMEOUT_MS || 30000)
const EXPECT_INTERVAL = Number(process.env.EXPECT_INTERVAL || 120)
const REFERENCE = process.env.INTEROP_REFERENCE === '1'
const RTC_CONFIG = { iceServers: [] } // no STUN: loopback host candidates only

let TRACKER_URL = process.env.TRACKER_URL || null
let server = null // { proc, bin, stderr: string, exit: null | { code, signal } }

// ---------------------------------------------------------------------------------------------
// Ids. The client API takes info_hash / peer_id as 40-hex strings or 20-byte Uint8Arrays (a
// 20-character string would be misread as hex); on the wire they become 20-char latin-1
// strings. `bin` is that wire form, `hex` what the client API and its events use.

const ALNUM = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'
function asciiId (prefix) {
  let s = prefix
  while (s.length < 20) s += ALNUM[randomInt(ALNUM.length)]
  assert.equal(s.length, 20)
  return id(Buffer.from(s, 'latin1'))
}
// WebTorrent-style raw bytes: NUL, '"', '\\', newline, DEL and bytes >= 0x80 (two UTF-8 bytes
// each on the wire), so JSON escaping and the latin-1 round trip are exercised.
function binaryId () {
  return id(Buffer.concat([Buffer.from([0x00, 0x22, 0x5c, 0x0a, 0x7f, 0x80, 0xe9, 0xff]), randomBytes(12)]))
}
function id (buf) {
  return { hex: buf.toString('hex'), bin: buf.toString('latin1') }
}

// ---------------------------------------------------------------------------------------------
// Frame log of the current test (every tracker socket, both directions), printed on failure.

let frames = []
const t0 = Date.now()
function logFrame (label, dir, data) {
  let text = typeof data === 'string' ? data : Buffer.from(data).toString('utf8')
  try {
    text = JSON.stringify(JSON.parse(text), (k, v) =>
      k === 'sdp' && typeof v === 'string' ? `<sdp ${v.length} chars>` : v)
  } catch { /* not JSON: keep it raw */ }
  if (text.length > 600) text = text.slice(0, 600) + '...'
  frames.push(`${String(Date.now() - t0).padStart(6)}ms ${label.padEnd(8)} ${dir === 'out' ? '->' : '<-'} ${text}`)
}
function tapSocket (sock, label) {
  if (!sock || sock.__interopTapped) return
  sock.__interopTapped = true
  const send = sock.send.bind(sock)
  sock.send = data => { logFrame(label, 'out', data); return send(data) }
  sock.on('data', data => logFrame(label, 'in', data))
  sock.on('close', () => frames.push(`${String(Date.now() - t0).padStart(6)}ms ${label.padEnd(8)} xx socket closed`))
}
function diagnostics () {
  const out = ['--- tracker frames of this test (tracker URL ' + TRACKER_URL + ') ---', ...frames]
  if (server) {
    out.push('--- tracker stderr (last 40 lines) ---', ...server.stderr.trimEnd().split('\n').slice(-40))
    if (server.exit) out.push(`--- tracker process EXITED: ${JSON.stringify(server.exit)} ---`)
  }
  for (const p of spawned) {
    if (p === server || !p.label) continue
    out.push(`--- ${p.label} stderr (last 40 lines) ---`, ...p.stderr.trimEnd().split('\n').slice(-40))
    if (p.exit) out.push(`--- ${p.label} EXITED: ${JSON.stringify(p.exit)} ---`)
  }
  return out.join('\n')
}
// Runs a test body; on failure prints the frame log and the server's stderr.
function withDiagnostics (fn) {
  return async t => {
    try {
      await fn(t)
    } catch (err) {
      console.error(`\n### ${t.name} failed: ${err && err.message}\n${diagnostics()}\n`)
      throw err
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Waiting, always bounded.

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

function nextEvent (emitter, name, what, ms = STEP_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.removeListener(name, onEvent)
      reject(new Error(`timed out after ${ms} ms waiting for ${what} ('${name}' event)`))
    }, ms)
    function onEvent (value) {
      clearTimeout(timer)
      resolve(value)
    }
    emitter.once(name, onEvent)
  })
}

async function waitFor (predicate, what, ms = STEP_MS) {
  const deadline = Date.now() + ms
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what()}`)
    await sleep(20)
  }
}

// Starts listening, then acts, so the event cannot be missed.
async function act (c, name, what, action) {
  const p = nextEvent(c.client, name, `${c.label}: ${what}`)
  action()
  return p
}

// ---------------------------------------------------------------------------------------------
// Clients. The reference client pools one WebSocket per announce URL per JS context; real
// browsers are separate contexts, so every client here gets its own URL spelling
// (/announce, /./announce, /././announce, ...) which `ws` normalises back to the very same
// request: same host, same path `/announce`, but a separate WebSocket connection.

let socketCounter = 0
function ownSocketUrl (trackerUrl = TRACKER_URL) {
  const k = socketCounter++
  const slash = trackerUrl.indexOf('/', trackerUrl.indexOf('://') + 3)
  if (slash < 0) return trackerUrl + '/' + './'.repeat(k)
  return trackerUrl.slice(0, slash + 1) + './'.repeat(k) + trackerUrl.slice(slash + 1)
}

const live = [] // everything to tear down after each test

function newClient (label, infoHash, peerId, trackerUrl = TRACKER_URL) {
  const c = {
    label,
    infoHash,
    peerId,
    url: ownSocketUrl(trackerUrl),
    warnings: [],
    errors: [],
    peers: [],
    peerErrors: []
  }
  c.client = new Client({
    infoHash: infoHash.hex,
    peerId: peerId.hex,
    announce: [c.url],
    port: 6881,
    wrtc,
    rtcConfig: RTC_CONFIG
  })
  assert.equal(c.client._trackers.length, 1, `${label}: the client made no WebSocket tracker for ${c.url}`)
  tapSocket(c.client._trackers[0].socket, label)
  c.client.on('warning', err => { c.warnings.push(err.message); frames.push(`        ${label} warning: ${err.message}`) })
  c.client.on('error', err => { c.errors.push(err.message); frames.push(`        ${label} error: ${err.message}`) })
  c.client.on('peer', peer => {
    c.peers.push(peer)
    peer.on('error', err => c.peerErrors.push(err.message))
  })
  live.push(() => destroyClient(c))
  return c
}

function destroyClient (c) {
  for (const peer of c.peers) peer.destroy()
  return destroyTrackerClient(c.client)
}

// Client#destroy calls back once its WebSocket is closed; it never calls back when the client
// was destroyed already (Client.scrape destroys its own), so never wait on it unbounded.
function destroyTrackerClient (client) {
  if (client.destroyed) return Promise.resolve()
  return new Promise(resolve => {
    const timer = setTimeout(resolve, 2000)
    client.destroy(() => { clearTimeout(timer); resolve() })
  })
}

function assertNoClientTrouble (...clients) {
  for (const c of clients) {
    assert.deepEqual(c.errors, [], `${c.label}: client 'error' events`)
    assert.deepEqual(c.warnings, [], `${c.label}: client 'warning' events (a tracker message the client rejected, a failure reason or a lost socket)`)
    const tracker = c.client._trackers[0]
    if (tracker) assert.equal(tracker.reconnecting, false, `${c.label}: the client lost its tracker socket and is backing off`)
  }
}

function assertCounts (u, c, complete, incomplete, what) {
  assert.deepEqual(
    { action: u.action, infoHash: u.infoHash, complete: u.complete, incomplete: u.incomplete, interval: u.interval },
    { action: 'announce', infoHash: c.infoHash.hex, complete, incomplete, interval: EXPECT_INTERVAL },
    `${c.label}: announce response after ${what}`)
}

function assertScrape (s, infoHash, complete, incomplete, what) {
  assert.equal(s.infoHash, infoHash.hex, `${what}: scrape entry for the wrong info_hash`)
  assert.deepEqual({ complete: s.complete, incomplete: s.incomplete }, { complete, incomplete }, `${what}: scrape counts`)
  assert.ok(Number.isInteger(s.downloaded) && s.downloaded >= 0, `${what}: scrape 'downloaded' must be a non-negative integer, got ${JSON.stringify(s.downloaded)}`)
}

// `Client.scrape` (static): one temporary client, array form of info_hash.
function staticScrape (infoHashes) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      client.destroy()
      reject(new Error(`timed out after ${STEP_MS} ms waiting for Client.scrape of ${infoHashes.length} info_hashes`))
    }, STEP_MS)
    const client = Client.scrape(
      { announce: ownSocketUrl(), infoHash: infoHashes.map(ih => ih.hex), wrtc, rtcConfig: RTC_CONFIG },
      (err, data) => {
        clearTimeout(timer)
        if (err) reject(err)
        else resolve(data)
      })
    tapSocket(client._trackers[0] && client._trackers[0].socket, 'scrape')
    live.push(() => destroyTrackerClient(client))
  })
}

function connected (peer, label) {
  if (peer.connected) return Promise.resolve()
  return nextEvent(peer, 'connect', `${label}: WebRTC data channel to open`, CONNECT_MS)
}

// ---------------------------------------------------------------------------------------------
// Raw WebSocket (for what the client cannot send).

async function rawSocket (label) {
  const ws = new WebSocket(ownSocketUrl())
  const r = { ws, label, inbox: [], waiters: [], closed: null }
  ws.on('message', data => {
    const text = data.toString('utf8')
    logFrame(label, 'in', text)
    const w = r.waiters.shift()
    if (w) w(text)
    else r.inbox.push(text)
  })
  ws.on('close', (code, reason) => {
    r.closed = { code, reason: reason.toString() }
    frames.push(`        ${label} xx socket closed ${code} ${reason}`)
  })
  ws.on('error', err => frames.push(`        ${label} socket error ${err.message}`))
  live.push(() => ws.terminate())
  await nextEvent(ws, 'open', `${label}: WebSocket to open`)
  return r
}
function rawSend (r, text) {
  logFrame(r.label, 'out', text)
  r.ws.send(text)
}
function rawNext (r, what, ms = STEP_MS) {
  if (r.inbox.length) return Promise.resolve(r.inbox.shift())
  return new Promise((resolve, reject) => {
    const waiter = text => { clearTimeout(timer); resolve(text) }
    const timer = setTimeout(() => {
      r.waiters.splice(r.waiters.indexOf(waiter), 1)
      reject(new Error(`${r.label}: no reply within ${ms} ms to ${what}` + (r.closed ? ` (socket closed: ${JSON.stringify(r.closed)})` : '')))
    }, ms)
    r.waiters.push(waiter)
  })
}
function parseJson (text, what) {
  try {
    return JSON.parse(text)
  } catch {
    assert.fail(`${what}: the reply is not JSON: ${text}`)
  }
}

// ---------------------------------------------------------------------------------------------
// The tracker under test.

function trackerBinary () {
  const bin = process.env.P2P_MEDIASTREAM_BIN
    ? path.resolve(process.env.P2P_MEDIASTREAM_BIN)
    : path.resolve(HERE, '../../target/debug/p2p-mediastream')
  if (!existsSync(bin)) {
    throw new Error(`tracker binary not found: ${bin}\n` +
      'Build it (cargo build), or set P2P_MEDIASTREAM_BIN=/path/to/p2p-mediastream, or TRACKER_URL=ws://127.0.0.1:PORT/announce')
  }
  return bin
}

// Spawns the tracker on 127.0.0.1 with an OS-chosen port (plus `env`); resolves to
// { proc, bin, stderr, exit, url, base } once it prints its "listening on" line.
async function spawnTracker (env = {}, label = null) {
  const bin = trackerBinary()
  const proc = spawn(bin, [], {
    cwd: REPO,
    env: {
      ...process.env,
      TRACKER__SERVER__HOST: '127.0.0.1',
      TRACKER__SERVER__PORT: '0',
      RUST_LOG: 'info',
      NO_COLOR: '1',
      ...env
    },
    stdio: ['ignore', 'ignore', 'pipe']
  })
  const tracker = { proc, bin, label, stderr: '', exit: null, url: null, base: null }
  spawned.push(tracker)
  proc.stderr.setEncoding('utf8')
  proc.stderr.on('data', chunk => {
    tracker.stderr += chunk
    if (tracker.stderr.length > 1_000_000) tracker.stderr = tracker.stderr.slice(-500_000)
  })
  proc.on('exit', (code, signal) => { tracker.exit = { code, signal } })

  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => fail(`no "listening on http://127.0.0.1:PORT" line on its stderr within ${START_MS} ms`), START_MS)
    function fail (why) {
      clearTimeout(timer)
      proc.stderr.removeListener('data', check)
      reject(new Error(`tracker ${bin}: ${why}\n--- its stderr ---\n${tracker.stderr}`))
    }
    function check () {
      // eslint-disable-next-line no-control-regex
      const m = tracker.stderr.replace(/\x1b\[[0-9;]*m/g, '').match(/listening on http:\/\/127\.0\.0\.1:(\d+)/)
      if (m) {
        clearTimeout(timer)
        proc.stderr.removeListener('data', check)
        resolve(Number(m[1]))
      }
    }
    proc.stderr.on('data', check)
    proc.once('error', err => fail(`could not start: ${err.message}`))
    proc.once('exit', (code, signal) => fail(`exited during start-up (code ${code}, signal ${signal})`))
    check()
  })
  assert.ok(port > 0 && port < 65536, `bad port ${port}`)
  tracker.base = `http://127.0.0.1:${port}`
  tracker.url = `ws://127.0.0.1:${port}/announce`
  return tracker
}

async function startServer () {
  server = await spawnTracker()
  return server.url
}

// Every process the test spawned (trackers, nats-server): stopped in `after`, and killed
// if the test process exits first.
const spawned = []

// SIGTERM, SIGKILL after 5 s; resolves once the process is gone.
async function stopProcess (p) {
  if (!p || p.exit) return
  const exited = new Promise(resolve => p.proc.once('exit', resolve))
  p.proc.kill('SIGTERM')
  const timer = setTimeout(() => { if (!p.exit) p.proc.kill('SIGKILL') }, 5000)
  await exited
  clearTimeout(timer)
}

async function stopServer () {
  await stopProcess(server)
}

process.on('exit', () => {
  for (const p of spawned) if (!p.exit) p.proc.kill('SIGKILL')
})

before(async () => {
  if (!TRACKER_URL) TRACKER_URL = await startServer()
  assert.match(TRACKER_URL, /^wss?:\/\//, 'TRACKER_URL must be a ws:// or wss:// URL')
  console.error(`# tracker under test: ${TRACKER_URL}${server ? ` (spawned ${server.bin}, pid ${server.proc.pid})` : ' (TRACKER_URL)'}`)
})

beforeEach(() => { frames = [] })

async function teardown () {
  const tasks = live.splice(0).reverse()
  for (const task of tasks) await task()
}

after(async () => {
  await teardown()
  await stopServer()
  for (const p of spawned.splice(0).reverse()) await stopProcess(p)
  if (server) console.error(`# tracker stopped: ${JSON.stringify(server.exit)}`)
})

// ---------------------------------------------------------------------------------------------
// a. announce lifecycle of one client

test('a. one client: started -> update -> completed -> stopped, with exact counts', { timeout: 8 * STEP_MS }, withDiagnostics(async () => {
  try {
    const a = newClient('A', asciiId('interop-a-'), asciiId('-IT0001-'))

    let u = await act(a, 'update', 'response to start', () => a.client.start())
    assertCounts(u, a, 0, 1, 'started (it counts itself as the one leecher)')

    u = await act(a, 'update', 'response to update', () => a.client.update())
    assertCounts(u, a, 0, 1, 'a periodic update (no event)')

    u = await act(a, 'update', 'response to complete', () => a.client.complete())
    assertCounts(u, a, 1, 0, 'completed (now a seeder)')

    u = await act(a, 'update', 'response to stop', () => a.client.stop())
    assertCounts(u, a, 0, 0, 'stopped (the swarm is empty after it)')

    const s = await act(a, 'scrape', 'scrape after stop', () => a.client.scrape())
    assertScrape(s, a.infoHash, 0, 0, 'scrape of the swarm A left')

    assertNoClientTrouble(a)
  } finally {
    await teardown()
  }
}))

// ---------------------------------------------------------------------------------------------
// b. scrape

test('b. scrape: client.scrape() for one info_hash, Client.scrape() for several', { timeout: 8 * STEP_MS }, withDiagnostics(async () => {
  try {
    const a = newClient('A', asciiId('interop-b1-'), asciiId('-IT0001-'))
    const b = newClient('B', asciiId('interop-b2-'), asciiId('-IT0001-'))
    const unknown = asciiId('interop-b0-')

    assertCounts(await act(a, 'update', 'response to start', () => a.client.start()), a, 0, 1, 'started')
    let s = await act(a, 'scrape', 'scrape of its own swarm', () => a.client.scrape())
    assertScrape(s, a.infoHash, 0, 1, "A's scrape of its swarm (single info_hash)")

    assertCounts(await act(b, 'update', 'response to start', () => b.client.start()), b, 0, 1, 'started')
    assertCounts(await act(b, 'update', 'response to complete', () => b.client.complete()), b, 1, 0, 'completed')

    const all = await staticScrape([a.infoHash, b.infoHash, unknown])
    assert.deepEqual(Object.keys(all).sort(), [a.infoHash.hex, b.infoHash.hex, unknown.hex].sort(),
      'Client.scrape must get one entry per requested info_hash')
    assertScrape(all[a.infoHash.hex], a.infoHash, 0, 1, 'Client.scrape, swarm of A (one leecher)')
    assertScrape(all[b.infoHash.hex], b.infoHash, 1, 0, 'Client.scrape, swarm of B (one seeder)')
    assertScrape(all[unknown.hex], unknown, 0, 0, 'Client.scrape, an info_hash nobody announced')

    s = await act(b, 'scrape', 'scrape of its own swarm', () => b.client.scrape())
    assertScrape(s, b.infoHash, 1, 0, "B's scrape of its swarm")

    assertNoClientTrouble(a, b)
  } finally {
    await teardown()
  }
}))

// A starts alone, then B: B's offer is relayed to A, A's answer to B, the WebRTC data channel
// opens and a message goes each way. Each side sees exactly one peer.
async function meetOverWebRTC (a, b) {
  const [pa, pb] = [a.peerId, b.peerId]
  assert.notEqual(a.client._trackers[0].socket, b.client._trackers[0].socket, 'A and B must have separate WebSockets, like two browsers')

  assertCounts(await act(a, 'update', 'response to start', () => a.client.start()), a, 0, 1, 'started alone')

  // B's start carries 5 offers; the swarm has one other peer (A), so exactly one is relayed
  // to A, A answers through the tracker, and the answer reaches B.
  const peerAtA = nextEvent(a.client, 'peer', "A: a 'peer' from B's relayed offer", CONNECT_MS)
  const peerAtB = nextEvent(b.client, 'peer', "B: a 'peer' from A's relayed answer", CONNECT_MS)
  assertCounts(await act(b, 'update', 'response to start', () => b.client.start()), b, 0, 2, 'started as the second leecher')

  const pA = await peerAtA
  assert.equal(pA.initiator, false, "A's peer must come from an offer (non-initiator)")
  assert.equal(pA.id, pb.hex, "A: the relayed offer must carry B's peer_id, byte-exact")
  const pB = await peerAtB
  assert.equal(pB.initiator, true, "B's peer must be one of its own offers, answered")
  assert.equal(pB.id, pa.hex, "B: the relayed answer must carry A's peer_id, byte-exact")

  await Promise.all([connected(pA, 'A'), connected(pB, 'B')])

  const nonce = randomBytes(8).toString('hex')
  let got = nextEvent(pA, 'data', 'A: the message B sent over the data channel')
  pB.send(`hello A, from B ${nonce}`)
  assert.equal(Buffer.from(await got).toString('utf8'), `hello A, from B ${nonce}`)
  got = nextEvent(pB, 'data', 'B: the message A sent over the data channel')
  pA.send(`hello B, from A ${nonce}`)
  assert.equal(Buffer.from(await got).toString('utf8'), `hello B, from A ${nonce}`)

  // Each offer of an announce goes to a different peer: with one other peer, A got one.
  await sleep(500)
  assert.equal(a.peers.length, 1, `A should have got exactly one offer, got ${a.peers.length}`)
  assert.equal(b.peers.length, 1, `B should have got exactly one answer, got ${b.peers.length}`)
  assert.deepEqual([...a.peerErrors, ...b.peerErrors], [], 'peer errors')
  assertNoClientTrouble(a, b)
}

// ---------------------------------------------------------------------------------------------
// c. two clients meet over WebRTC through the tracker

for (const kind of ['ascii', 'binary']) {
  const ids = kind === 'ascii'
    ? () => [asciiId('interop-c-'), asciiId('-IT0001-'), asciiId('-IT0001-')] // P2P Media Loader style
    : () => [binaryId(), binaryId(), binaryId()] // WebTorrent style (raw SHA-1 bytes)
  test(`c. two clients connect over WebRTC through the tracker (${kind} info_hash and peer_ids)`, { timeout: 10 * STEP_MS }, withDiagnostics(async () => {
    try {
      const [ih, pa, pb] = ids()
      await meetOverWebRTC(newClient('A', ih, pa), newClient('B', ih, pb))
    } finally {
      await teardown()
    }
  }))
}

// ---------------------------------------------------------------------------------------------
// d. leaving lowers the counts

test('d. after one client stops, the other sees the count go down', { timeout: 10 * STEP_MS }, withDiagnostics(async () => {
  try {
    const ih = asciiId('interop-d-')
    const a = newClient('A', ih, asciiId('-IT0001-'))
    const b = newClient('B', ih, asciiId('-IT0001-'))

    assertCounts(await act(a, 'update', 'response to start', () => a.client.start()), a, 0, 1, 'started alone')
    assertCounts(await act(b, 'update', 'response to start', () => b.client.start()), b, 0, 2, 'started second')
    assertCounts(await act(a, 'update', 'response to update', () => a.client.update()), a, 0, 2, 'an update with B in the swarm')
    // B's start offer went to A and A's update offer went to B; let both answers arrive before B
    // stops, so that B sends nothing after its `stopped` (bittorrent-tracker's own server would
    // put a peer that answers after stopping back into the swarm).
    await waitFor(() => a.peers.length === 2 && b.peers.length === 2,
      () => `both offers relayed and answered (A has ${a.peers.length} peers, B has ${b.peers.length}; want 2 and 2)`)
    assertCounts(await act(b, 'update', 'response to stop', () => b.client.stop()), b, 0, 1, 'B stopped')
    assertCounts(await act(a, 'update', 'response to update', () => a.client.update()), a, 0, 1, 'an update after B stopped')
    assertNoClientTrouble(a, b)
  } finally {
    await teardown()
  }
}))

test('d2. when a client closes its socket without stopping, the others see the count go down at once', { timeout: 10 * STEP_MS }, withDiagnostics(async () => {
  try {
    const ih = asciiId('interop-d2-')
    const a = newClient('A', ih, asciiId('-IT0001-'))
    const b = newClient('B', ih, asciiId('-IT0001-'))

    assertCounts(await act(a, 'update', 'response to start', () => a.client.start()), a, 0, 1, 'started alone')
    assertCounts(await act(b, 'update', 'response to start', () => b.client.start()), b, 0, 2, 'started second')
    assertCounts(await act(b, 'update', 'response to complete', () => b.client.complete()), b, 1, 1, 'B completed (a seeder now)')
    // Let A's answer to B's offer reach B (and the two connect) before B goes, or A's answer
    // would rightly get a failure ("offerer gone") that the client reports as a warning.
    await waitFor(() => a.peers.length === 1 && b.peers.length === 1,
      () => `B's offer relayed and answered (A has ${a.peers.length} peers, B has ${b.peers.length}; want 1 and 1)`)
    await Promise.all([connected(a.peers[0], 'A'), connected(b.peers[0], 'B')])
    assertNoClientTrouble(a, b)
    await destroyClient(b) // no `stopped`: the WebSocket just closes (closing handshake done)
    assertCounts(await act(a, 'update', 'response to update', () => a.client.update()), a, 0, 1, "an update after B's socket closed")
    assertNoClientTrouble(a)
  } finally {
    await teardown()
  }
}))

// ---------------------------------------------------------------------------------------------
// e. failures carry `action` and do not cost the socket

const REF_TODO = REFERENCE && 'bittorrent-tracker answers invalid input with a bare {"failure reason"} (no action)'

test('e. malformed announces get a failure reason with action "announce", and the socket stays usable', { timeout: 10 * STEP_MS }, withDiagnostics(async t => {
  const ih = asciiId('interop-e-')
  const pid = asciiId('-IT0001-')
  const base = { action: 'announce', info_hash: ih.bin, uploaded: 0, downloaded: 0, event: 'started' }
  const cases = [
    ['peer_id of 19 characters', JSON.stringify({ ...base, peer_id: pid.bin.slice(0, 19) }), true],
    ['peer_id of 21 characters', JSON.stringify({ ...base, peer_id: pid.bin + 'x' }), true],
    ['info_hash of 19 characters', JSON.stringify({ ...base, info_hash: ih.bin.slice(0, 19), peer_id: pid.bin }), false],
    ['a frame that is not JSON', '{"action":"announce","info_hash":', false]
  ]
  try {
    const r = await rawSocket('raw')
    for (const [name, frame, infoHashKnown] of cases) {
      await t.test(name, { todo: REF_TODO }, async () => {
        rawSend(r, frame)
        const reply = parseJson(await rawNext(r, name), name)
        assert.equal(typeof reply['failure reason'], 'string', `${name}: reply must have a "failure reason": ${JSON.stringify(reply)}`)
        assert.ok(reply['failure reason'].length > 0, `${name}: empty failure reason`)
        assert.equal(reply.action, 'announce', `${name}: the failure must carry action "announce" (without it the reference client drops its socket): ${JSON.stringify(reply)}`)
        // The client drops any announce message whose info_hash is not its own before it even
        // looks at `failure reason`: a failure reaches the application only with the info_hash.
        if (infoHashKnown) assert.equal(reply.info_hash, ih.bin, `${name}: the failure must carry the (valid) info_hash that was sent: ${JSON.stringify(reply)}`)
        assert.equal(r.closed, null, `${name}: the tracker closed the socket`)
      })
    }

    // Whatever the malformed frames got, the same socket must still serve a valid announce.
    rawSend(r, JSON.stringify({ ...base, peer_id: pid.bin }))
    const reply = parseJson(await rawNext(r, 'a valid announce after the malformed ones'), 'valid announce')
    assert.deepEqual(
      { action: reply.action, info_hash: reply.info_hash, complete: reply.complete, incomplete: reply.incomplete, interval: reply.interval, failure: reply['failure reason'] },
      { action: 'announce', info_hash: ih.bin, complete: 0, incomplete: 1, interval: EXPECT_INTERVAL, failure: undefined },
      'normal announce response on the same socket')
    assert.equal(r.closed, null, 'the tracker closed the socket')
    assert.equal(r.ws.readyState, WebSocket.OPEN)
  } finally {
    await teardown()
  }
}))

// ---------------------------------------------------------------------------------------------
// f. two instances clustered over a real NATS server: a client on each, one swarm

// Fast heartbeats, so that the two instances see each other within a second.
const CLUSTER_ENV = {
  TRACKER__CLUSTER__HEARTBEAT_INTERVAL_MS: '100',
  TRACKER__CLUSTER__EXPIRY_MS: '600',
  TRACKER__CLUSTER__RECONNECT_MAX_DELAY_MS: '200'
}

function natsServerBinary () {
  const dirs = (process.env.PATH || '').split(path.delimiter).filter(Boolean).concat(['/usr/sbin'])
  for (const dir of dirs) {
    const candidate = path.join(dir, 'nats-server')
    if (existsSync(candidate)) return candidate
  }
  throw new Error('nats-server not found (on PATH or in /usr/sbin): the cluster case needs a real NATS server. ' +
    'Install it with `apt-get install -y nats-server` (scripts/test.sh does), or run the other cases alone with ' +
    "`tests/interop/run.sh --test-name-pattern='^[a-e]'`")
}

function freeTcpPort () {
  return new Promise((resolve, reject) => {
    const probe = net.createServer()
    probe.once('error', reject)
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address()
      probe.close(() => resolve(port))
    })
  })
}

function canConnect (port) {
  return new Promise(resolve => {
    const socket = net.connect(port, '127.0.0.1')
    const done = ok => { socket.destroy(); resolve(ok) }
    socket.setTimeout(1000, () => done(false))
    socket.once('connect', () => done(true))
    socket.once('error', () => done(false))
  })
}

// A nats-server on a free loopback port; resolves once it accepts connections.
async function startNats () {
  const bin = natsServerBinary()
  const port = await freeTcpPort()
  const proc = spawn(bin, ['-a', '127.0.0.1', '-p', String(port)], { stdio: ['ignore', 'ignore', 'pipe'] })
  const nats = { proc, bin, label: 'nats-server', stderr: '', exit: null, url: `nats://127.0.0.1:${port}` }
  spawned.push(nats)
  proc.stderr.setEncoding('utf8')
  proc.stderr.on('data', chunk => { nats.stderr = (nats.stderr + chunk).slice(-100_000) })
  proc.on('exit', (code, signal) => { nats.exit = { code, signal } })
  proc.on('error', err => { nats.stderr += `spawn error: ${err.message}\n` })
  await waitForAsync(async () => !nats.exit && await canConnect(port),
    () => `${bin} to accept connections on 127.0.0.1:${port}` + (nats.exit ? ` (it exited: ${JSON.stringify(nats.exit)}; stderr: ${nats.stderr})` : ''),
    START_MS)
  return nats
}

async function waitForAsync (predicate, what, ms = STEP_MS) {
  const deadline = Date.now() + ms
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what()}`)
    await sleep(50)
  }
}

async function statsOf (tracker) {
  const res = await fetch(`${tracker.base}/stats.json`, { signal: AbortSignal.timeout(STEP_MS) })
  assert.equal(res.status, 200, `${tracker.label}: GET /stats.json`)
  return res.json()
}

// The `cluster` section of an instance's /stats.json (null when clustering is off).
async function clusterOf (tracker) {
  return (await statsOf(tracker)).cluster ?? null
}

const sum = (views, field, kind) => views.reduce((total, view) => total + (view[field][kind] ?? 0), 0)

test('f. cluster: two clients on two instances clustered over NATS connect over WebRTC', {
  timeout: 12 * STEP_MS,
  skip: process.env.TRACKER_URL && 'TRACKER_URL is set: the cluster case spawns its own instances'
}, withDiagnostics(async () => {
  try {
    const nats = await startNats()
    const env = { ...CLUSTER_ENV, TRACKER__CLUSTER__NATS_URLS: nats.url }
    const one = await spawnTracker({ ...env, TRACKER__CLUSTER__INSTANCE_ID: 'interop-1' }, 'instance 1')
    const two = await spawnTracker({ ...env, TRACKER__CLUSTER__INSTANCE_ID: 'interop-2' }, 'instance 2')
    console.error(`# cluster: ${nats.url}, instance 1 ${one.url}, instance 2 ${two.url}`)

    // Both instances up on the bus, each seeing exactly the two of them.
    let views = []
    await waitForAsync(async () => {
      views = [await clusterOf(one), await clusterOf(two)]
      assert.ok(views.every(Boolean), 'an instance has no "cluster" section in /stats.json: clustering is off')
      const ids = views.map(view => view.instance).sort()
      return views.every(view => view.busUp === true && JSON.stringify([...view.instances].sort()) === JSON.stringify(ids))
    }, () => `both instances to see each other on the bus: ${JSON.stringify(views.map(v => v && { instance: v.instance, busUp: v.busUp, instances: v.instances }))}`)

    // One swarm, one client on each instance: whichever owns the swarm, the other one's
    // requests cross the bus (its announce is forwarded, and an offer or answer is delivered).
    const ih = asciiId('interop-f-')
    const a = newClient('A', ih, asciiId('-IT0001-'), one.url)
    const b = newClient('B', ih, asciiId('-IT0001-'), two.url)
    await meetOverWebRTC(a, b)

    views = [await clusterOf(one), await clusterOf(two)]
    const owner = views.findIndex(view => (view.handled.announce ?? 0) > 0)
    console.error(`# cluster: the swarm is owned by instance ${owner + 1}; forwarded ` +
      views.map((view, i) => `by instance ${i + 1} ${JSON.stringify(view.forwarded)}`).join(', '))
    assert.ok(sum(views, 'forwarded', 'announce') >= 1, 'no announce crossed the bus: the two clients met without the cluster?')
    assert.ok(sum(views, 'handled', 'announce') >= 1, 'no instance handled a forwarded announce')
    assert.ok(sum(views, 'forwarded', 'deliver') >= 1, 'no offer or answer was delivered over the bus')
    for (const [i, view] of views.entries()) {
      const dropped = Object.entries(view.dropped).filter(([, count]) => count > 0)
      assert.deepEqual(dropped, [], `instance ${i + 1} dropped cluster messages`)
    }
  } finally {
    await teardown()
    // The instances first (they leave the bus), then NATS.
    for (const p of spawned.filter(p => p !== server).reverse()) await stopProcess(p)
  }
}))

// ---------------------------------------------------------------------------------------------

test('the tracker is still up and answering after all of the above', { timeout: 4 * STEP_MS }, withDiagnostics(async () => {
  try {
    if (server) assert.equal(server.exit, null, 'the tracker process died during the test')
    const r = await rawSocket('raw')
    const ih = asciiId('interop-z-')
    rawSend(r, JSON.stringify({ action: 'scrape', info_hash: [ih.bin] }))
    const reply = parseJson(await rawNext(r, 'a scrape'), 'scrape')
    assert.equal(reply.action, 'scrape')
    assert.deepEqual(reply.files, { [ih.bin]: { complete: 0, incomplete: 0, downloaded: 0 } })
  } finally {
    await teardown()
  }
}))
