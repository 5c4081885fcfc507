// The reference WebTorrent tracker (npm bittorrent-tracker) as a plain WebSocket server,
// for scripts/bench-trackers.sh. The orchestrator copies this file next to the installed
// node_modules (target/bench/reference/) and starts it as
//   node server.mjs PORT
// It listens on 127.0.0.1 only, prints "listening PORT" once ready, and exits on SIGTERM/SIGINT.
import Server from 'bittorrent-tracker/server'

const port = Number.parseInt(process.argv[2] ?? '', 10)
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node server.mjs PORT')
  process.exit(2)
}

const server = new Server({ udp: false, http: false, ws: true, stats: false })
let warnings = 0
server.on('error', (err) => {
  console.error(`ERROR ${err && err.message ? err.message : err}`)
})
server.on('warning', (err) => {
  // Per-request problems (bad input, unknown offer): counted, printed sparingly.
  warnings += 1
  if (warnings <= 20) console.error(`WARN ${err && err.message ? err.message : err}`)
})
server.on('listening', () => console.log(`listening ${port}`))

const stop = (signal) => {
  console.log(`${signal}: stopping (${warnings} warnings)`)
  server.close(() => process.exit(0))
  // Open WebSockets can hold close() up; do not wait for them.
  setTimeout(() => process.exit(0), 2000).unref()
}
process.on('SIGTERM', () => stop('SIGTERM'))
process.on('SIGINT', () => stop('SIGINT'))

server.listen(port, '127.0.0.1')
