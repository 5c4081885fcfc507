// Stand-in for the `webrtc-polyfill` package: the WebRTC classes of @roamhq/wrtc.
//
// Loopback only: the sandbox allows no traffic off 127.0.0.0/8 / ::1, but libwebrtc gathers
// host candidates on every interface (e.g. eth0). RTCPeerConnection below drops every
// remote ICE candidate whose address is not loopback, so connectivity checks (and the data
// channel) only ever target 127.0.0.1 / ::1. The SDP relayed through the tracker is
// untouched (the tracker must relay it verbatim anyway).
import wrtc from '@roamhq/wrtc'

export function isLoopback (address) {
  return /^127\./.test(address) || address === '::1'
}

// `a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ ...`
export function keepLoopbackCandidates (sdp) {
  return sdp
    .split(/\r?\n/)
    .filter(line => !line.startsWith('a=candidate:') || isLoopback(line.split(' ')[4]))
    .join('\r\n')
}

export class RTCPeerConnection extends wrtc.RTCPeerConnection {
  setRemoteDescription (description) {
    if (description && typeof description.sdp === 'string') {
      description = { type: description.type, sdp: keepLoopbackCandidates(description.sdp) }
    }
    return super.setRemoteDescription(description)
  }

  addIceCandidate (candidate) {
    const text = candidate && (candidate.candidate ?? candidate)
    if (typeof text === 'string' && text !== '' && !isLoopback(text.replace(/^a=/, '').split(' ')[4])) {
      return Promise.resolve()
    }
    return super.addIceCandidate(candidate)
  }
}

export const {
  RTCSessionDescription,
  RTCIceCandidate,
  RTCDataChannel,
  RTCDataChannelEvent,
  RTCIceTransport,
  RTCDtlsTransport,
  RTCSctpTransport,
  RTCPeerConnectionIceEvent,
  MediaStream,
  MediaStreamTrack
} = wrtc

export default { ...wrtc, RTCPeerConnection }
