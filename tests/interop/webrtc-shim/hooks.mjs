// Node module-resolution hook (registered with node:module `register()` by interop.test.mjs).
//
// bittorrent-tracker's WebSocket client creates its WebRTC peers with @thaunknown/simple-peer,
// which takes RTCPeerConnection & co. from a static `import ... from 'webrtc-polyfill'`
// (backed by node-datachannel, whose native binary is downloaded by an install script and
// so is missing here: `npm ci --ignore-scripts`). simple-peer 10 ignores the `wrtc` option.
// We therefore resolve the bare specifier `webrtc-polyfill` to a small module that re-exports
// @roamhq/wrtc (native binary shipped as the npm package @roamhq/wrtc-linux-x64).
// Nothing else of the client is touched.
const SHIM_URL = new URL('./webrtc-polyfill.mjs', import.meta.url).href

export async function resolve (specifier, context, nextResolve) {
  if (specifier === 'webrtc-polyfill') return { url: SHIM_URL, shortCircuit: true }
  return nextResolve(specifier, context)
}
