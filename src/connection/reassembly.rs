//! Turns the WebSocket messages of one connection into what the tracker acts on: whole
//! text messages (continuation frames reassembled), pings and the close, and refuses what
//! RFC 6455 or our limits forbid. Plain data: no actor, no socket.

use actix_http::ws::{CloseCode, CloseReason, Item, Message};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

/// Most fragments one message may arrive in; empty continuation frames would otherwise
/// cost work without growing the buffer.
pub const MAX_FRAGMENTS: usize = 64;

/// What a message amounts to.
#[derive(Debug, PartialEq)]
pub enum Received {
    /// A whole text message.
    Text(ByteString),
    Ping(Bytes),
    /// The client's close frame (to be echoed).
    Close(Option<CloseReason>),
    /// Nothing to act on: a pong, a fragment of an unfinished message, or the end of a
    /// message that was dropped (see `Reassembly::drop_current`).
    Nothing,
}

/// Why the connection must close; each maps to the close code RFC 6455 assigns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    Binary,
    /// A new message began before a fragmented one ended (RFC 6455 5.4).
    Interrupted,
    ContinuationWithoutStart,
    TooLarge,
    TooManyFragments,
    NotUtf8,
}

impl Violation {
    pub fn close_code(self) -> CloseCode {
        match self {
            Violation::Binary => CloseCode::Unsupported,
            Violation::Interrupted | Violation::ContinuationWithoutStart => CloseCode::Protocol,
            Violation::TooLarge => CloseCode::Size,
            Violation::TooManyFragments => CloseCode::Policy,
            Violation::NotUtf8 => CloseCode::Invalid,
        }
    }

    /// The close reason sent to the client (and the metrics label of the close).
    pub fn reason(self) -> &'static str {
        match self {
            Violation::Binary => "binary frames are not supported",
            Violation::Interrupted => "new message before the last ended",
            Violation::ContinuationWithoutStart => "continuation without a first frame",
            Violation::TooLarge => "message too large",
            Violation::TooManyFragments => "too many fragments",
            Violation::NotUtf8 => "text message is not UTF-8",
        }
    }
}

/// A text message arriving in fragments.
#[derive(Debug)]
struct Fragments {
    buffer: BytesMut,
    frames: usize,
    /// Refused (rate limit): still reassembled, to stay in step with the stream, and
    /// dropped when complete.
    dropped: bool,
}

/// The reassembly state of one connection. Empty (one null pointer) unless a fragmented
/// message is in flight: it is part of every idle connection's memory.
#[derive(Debug, Default)]
pub struct Reassembly {
    fragments: Option<Box<Fragments>>,
}

impl Reassembly {
    /// Whether `message` starts a new text message (what the rate limit counts, once per
    /// message however many fragments it comes in).
    pub fn starts_text(message: &Message) -> bool {
        matches!(
            message,
            Message::Text(_) | Message::Continuation(Item::FirstText(_))
        )
    }

    /// Marks the message being reassembled as dropped; its end yields `Nothing`.
    pub fn drop_current(&mut self) {
        if let Some(fragments) = self.fragments.as_mut() {
            fragments.dropped = true;
        }
    }

    /// Takes one message off the socket; `max_message_bytes` caps a reassembled message.
    pub fn push(
        &mut self,
        message: Message,
        max_message_bytes: usize,
    ) -> Result<Received, Violation> {
        match message {
            Message::Text(text) => {
                self.refuse_interruption()?;
                Ok(Received::Text(text))
            }
            Message::Binary(_) | Message::Continuation(Item::FirstBinary(_)) => {
                Err(Violation::Binary)
            }
            Message::Continuation(Item::FirstText(chunk)) => {
                self.refuse_interruption()?;
                self.fragments = Some(Box::new(Fragments {
                    buffer: BytesMut::new(),
                    frames: 0,
                    dropped: false,
                }));
                self.append(chunk, false, max_message_bytes)
            }
            Message::Continuation(Item::Continue(chunk)) => {
                self.append(chunk, false, max_message_bytes)
            }
            Message::Continuation(Item::Last(chunk)) => self.append(chunk, true, max_message_bytes),
            Message::Ping(payload) => Ok(Received::Ping(payload)),
            Message::Close(reason) => Ok(Received::Close(reason)),
            Message::Pong(_) | Message::Nop => Ok(Received::Nothing),
        }
    }

    fn refuse_interruption(&self) -> Result<(), Violation> {
        match self.fragments {
            Some(_) => Err(Violation::Interrupted),
            None => Ok(()),
        }
    }

    fn append(
        &mut self,
        chunk: Bytes,
        last: bool,
        max_message_bytes: usize,
    ) -> Result<Received, Violation> {
        let fragments = self
            .fragments
            .as_mut()
            .ok_or(Violation::ContinuationWithoutStart)?;
        fragments.frames += 1;
        if fragments.buffer.len() + chunk.len() > max_message_bytes {
            return Err(Violation::TooLarge);
        }
        if fragments.frames > MAX_FRAGMENTS {
            return Err(Violation::TooManyFragments);
        }
        fragments.buffer.extend_from_slice(&chunk);
        if !last {
            return Ok(Received::Nothing);
        }
        let Some(complete) = self.fragments.take() else {
            return Ok(Received::Nothing);
        };
        if complete.dropped {
            return Ok(Received::Nothing);
        }
        ByteString::try_from(complete.buffer.freeze())
            .map(Received::Text)
            .map_err(|_| Violation::NotUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 100;

    fn first(text: &str) -> Message {
        Message::Continuation(Item::FirstText(Bytes::copy_from_slice(text.as_bytes())))
    }

    fn more(text: &str) -> Message {
        Message::Continuation(Item::Continue(Bytes::copy_from_slice(text.as_bytes())))
    }

    fn last(bytes: &[u8]) -> Message {
        Message::Continuation(Item::Last(Bytes::copy_from_slice(bytes)))
    }

    fn text(received: Result<Received, Violation>) -> String {
        match received {
            Ok(Received::Text(text)) => text.to_string(),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    #[test]
    fn fragments_are_joined_into_one_message() {
        let mut reassembly = Reassembly::default();
        assert_eq!(reassembly.push(first("{\"a\""), MAX), Ok(Received::Nothing));
        assert_eq!(reassembly.push(more(":"), MAX), Ok(Received::Nothing));
        assert_eq!(text(reassembly.push(last(b"1}"), MAX)), "{\"a\":1}");
        // The state is empty again: a plain text message is welcome.
        let whole = Message::Text("{}".into());
        assert_eq!(text(reassembly.push(whole, MAX)), "{}");
    }

    #[test]
    fn a_control_frame_may_come_between_fragments() {
        let mut reassembly = Reassembly::default();
        reassembly.push(first("ab"), MAX).expect("first");
        let ping = Message::Ping(Bytes::from_static(b"x"));
        assert_eq!(
            reassembly.push(ping, MAX),
            Ok(Received::Ping(Bytes::from_static(b"x")))
        );
        assert_eq!(text(reassembly.push(last(b"c"), MAX)), "abc");
    }

    #[test]
    fn a_new_message_may_not_interrupt_a_fragmented_one() {
        let mut reassembly = Reassembly::default();
        reassembly.push(first("ab"), MAX).expect("first");
        let whole = Message::Text("{}".into());
        assert_eq!(reassembly.push(whole, MAX), Err(Violation::Interrupted));
        assert_eq!(
            reassembly.push(first("x"), MAX),
            Err(Violation::Interrupted)
        );
    }

    #[test]
    fn continuations_need_a_first_frame() {
        let mut reassembly = Reassembly::default();
        assert_eq!(
            reassembly.push(more("x"), MAX),
            Err(Violation::ContinuationWithoutStart)
        );
        assert_eq!(
            reassembly.push(last(b"x"), MAX),
            Err(Violation::ContinuationWithoutStart)
        );
    }

    #[test]
    fn the_size_cap_counts_every_fragment() {
        let mut reassembly = Reassembly::default();
        reassembly.push(first(&"a".repeat(60)), MAX).expect("first");
        assert_eq!(
            reassembly.push(more(&"a".repeat(41)), MAX),
            Err(Violation::TooLarge)
        );
    }

    #[test]
    fn empty_fragments_are_counted() {
        let mut reassembly = Reassembly::default();
        reassembly.push(first(""), MAX).expect("first");
        for _ in 1..MAX_FRAGMENTS {
            assert_eq!(reassembly.push(more(""), MAX), Ok(Received::Nothing));
        }
        assert_eq!(
            reassembly.push(more(""), MAX),
            Err(Violation::TooManyFragments)
        );
    }

    #[test]
    fn a_fragmented_message_must_be_utf8_once_whole() {
        let e_acute = "\u{e9}".as_bytes();
        let mut reassembly = Reassembly::default();
        // A character split across two fragments is fine...
        let head = Message::Continuation(Item::FirstText(Bytes::copy_from_slice(&e_acute[..1])));
        reassembly.push(head, MAX).expect("first");
        assert_eq!(text(reassembly.push(last(&e_acute[1..]), MAX)), "\u{e9}");
        // ...half a character at the end is not.
        reassembly.push(first("a"), MAX).expect("first");
        assert_eq!(
            reassembly.push(last(&e_acute[..1]), MAX),
            Err(Violation::NotUtf8)
        );
    }

    #[test]
    fn binary_is_refused_whole_or_fragmented() {
        let mut reassembly = Reassembly::default();
        let binary = Message::Binary(Bytes::from_static(b"\x00"));
        assert_eq!(reassembly.push(binary, MAX), Err(Violation::Binary));
        let fragment = Message::Continuation(Item::FirstBinary(Bytes::new()));
        assert_eq!(reassembly.push(fragment, MAX), Err(Violation::Binary));
    }

    #[test]
    fn a_dropped_message_is_reassembled_but_not_delivered() {
        let mut reassembly = Reassembly::default();
        reassembly.push(first("ab"), MAX).expect("first");
        reassembly.drop_current();
        assert_eq!(reassembly.push(last(b"c"), MAX), Ok(Received::Nothing));
        let whole = Message::Text("{}".into());
        assert_eq!(text(reassembly.push(whole, MAX)), "{}", "in step again");
    }

    #[test]
    fn close_codes_follow_rfc_6455() {
        assert_eq!(Violation::Binary.close_code(), CloseCode::Unsupported);
        assert_eq!(Violation::TooLarge.close_code(), CloseCode::Size);
        assert_eq!(Violation::NotUtf8.close_code(), CloseCode::Invalid);
        assert_eq!(Violation::Interrupted.close_code(), CloseCode::Protocol);
    }
}
