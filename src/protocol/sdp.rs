//! SDP bodies, kept in the JSON-escaped form they arrived in.
//!
//! A tracker never reads an SDP: it takes one from a client's frame and writes it into
//! another client's frame. Every SDP line ends in `\r\n`, so unescaping it on the way in
//! means building a new string, and escaping it on the way out means scanning and copying
//! it again; under load that was about 8 % of the server's CPU. An [`Sdp`] holds the JSON
//! string literal exactly as the client sent it, quotes and escapes included, checked to be
//! one well-formed JSON string, and is written back verbatim.
//!
//! What the receiving browser parses is therefore byte for byte what the sender wrote,
//! escapes included (`\u0041` stays `\u0041`, `JSON.parse` gives the same string either
//! way). Sizes are counted on this escaped form: it is what crosses the network and what a
//! frame limit sees.

use std::{fmt, sync::Arc};

use serde_json::value::RawValue;

/// One SDP body as a JSON string literal (with its quotes); shared, so relaying it to a
/// peer or over the bus does not copy it.
#[derive(Clone, PartialEq, Eq)]
pub struct Sdp(Arc<str>);

/// Why text is not an SDP literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAString;

impl fmt::Display for NotAString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("must be a JSON string")
    }
}

impl Sdp {
    /// From a value of a parsed message: `None` unless the value is a string. `RawValue`
    /// has already checked its JSON (escapes, no raw control characters) and holds exactly
    /// the value's text, without surrounding whitespace.
    pub fn from_raw(raw: &RawValue) -> Option<Self> {
        let json = raw.get();
        json.starts_with('"').then(|| Self(Arc::from(json)))
    }

    /// From the text of a literal that did not come out of a parsed message (the bus):
    /// checked to be exactly one JSON string and nothing else.
    pub fn from_json(json: &str) -> Result<Self, NotAString> {
        match serde_json::from_str::<&RawValue>(json) {
            Ok(raw) if raw.get().len() == json.len() => Self::from_raw(raw).ok_or(NotAString),
            _ => Err(NotAString),
        }
    }

    /// From the SDP text itself, escaped here (tests and tools).
    pub fn from_text(text: &str) -> Self {
        // Serialising a `&str` cannot fail.
        Self(Arc::from(serde_json::to_string(text).unwrap_or_default()))
    }

    /// The JSON string literal, quotes included: what goes into an outgoing frame.
    pub fn as_json(&self) -> &str {
        &self.0
    }

    /// Bytes of the escaped body, without the quotes: what `tracker.max_sdp_bytes` bounds.
    pub fn escaped_len(&self) -> usize {
        escaped_len_of(&self.0)
    }

    /// The SDP text, unescaped (tests, trace logs).
    pub fn to_text(&self) -> String {
        serde_json::from_str(&self.0).unwrap_or_default()
    }
}

/// Bytes of the body of the string literal `json`, without its quotes: measured on the raw
/// literal, so that an oversized SDP is refused before it is copied.
pub fn escaped_len_of(json: &str) -> usize {
    json.len().saturating_sub(2)
}

/// Length only: SDP bodies carry addresses and are never logged above trace.
impl fmt::Debug for Sdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sdp({} bytes)", self.escaped_len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_literal_is_kept_verbatim() {
        let raw: &RawValue = serde_json::from_str(r#"  "v=0\r\no=- 1\u0041"  "#).expect("JSON");
        let sdp = Sdp::from_raw(raw).expect("a string");
        assert_eq!(sdp.as_json(), r#""v=0\r\no=- 1\u0041""#);
        assert_eq!(sdp.escaped_len(), sdp.as_json().len() - 2);
        assert_eq!(sdp.to_text(), "v=0\r\no=- 1A");
    }

    #[test]
    fn other_json_values_are_not_sdps() {
        for json in ["null", "12", "{\"sdp\":\"x\"}", "[\"x\"]", "true"] {
            let raw: &RawValue = serde_json::from_str(json).expect("JSON");
            assert_eq!(Sdp::from_raw(raw), None, "{json}");
            assert_eq!(Sdp::from_json(json), Err(NotAString), "{json}");
        }
    }

    #[test]
    fn literals_from_elsewhere_are_checked_whole() {
        assert!(Sdp::from_json(r#""v=0\r\n""#).is_ok());
        for bad in [
            "",
            "\"unterminated",
            "\"raw\ncontrol\"",
            r#""bad \x escape""#,
            r#""a" "b""#,
            r#" "padded""#,
        ] {
            assert_eq!(Sdp::from_json(bad), Err(NotAString), "{bad:?}");
        }
    }

    #[test]
    fn text_round_trips_through_the_escaped_form() {
        let text = "v=0\r\na=candidate \"quoted\" \\ é\u{1}";
        let sdp = Sdp::from_text(text);
        assert_eq!(sdp.to_text(), text);
        assert_eq!(Sdp::from_json(sdp.as_json()), Ok(sdp.clone()));
        assert_eq!(
            format!("{sdp:?}"),
            format!("Sdp({} bytes)", sdp.escaped_len())
        );
    }
}
