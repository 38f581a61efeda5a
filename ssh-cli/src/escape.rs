//! Safe printing of text that came from the CA or the identity provider.
//!
//! User names, principals, problem details and IdP error descriptions are chosen by parties
//! we do not control. Printed raw, a value with an ANSI escape sequence, a carriage return or
//! a newline could rewrite what the terminal shows (fake a `signed in as root` line, hide a
//! warning, …). Every such value goes through [`escape`] before it reaches stdout or stderr.

/// Characters that change how text is laid out or read without being control characters:
/// the Unicode bidirectional overrides, embeddings and isolates, the directional marks, and
/// the line and paragraph separators. They can make a printed value display in another order
/// than its bytes ("Trojan Source"), so they are escaped as well.
fn is_layout_char(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
    )
}

/// Returns `text` with every control character (C0, DEL, C1), every bidirectional/layout
/// character and every backslash escaped, in the style of [`char::escape_debug`]: `\n`,
/// `\r`, `\t`, `\0`, `\\`, otherwise `\u{XX}`.
///
/// Invariant: the result contains no control or layout character at all, so it always
/// prints as exactly one line that shows its own bytes; and because the backslash itself is
/// escaped, two different inputs never print the same.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if c.is_control() || is_layout_char(c) => {
                out.extend(c.escape_unicode());
            }
            c => out.push(c),
        }
    }
    out
}

/// Escapes each item and joins them with `, `; `(none)` for an empty list, so an empty
/// principal list is never shown as a blank that could be mistaken for a cut-off line.
pub fn escape_list(items: &[String]) -> String {
    if items.is_empty() {
        return "(none)".to_string();
    }
    items
        .iter()
        .map(|s| escape(s))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Pretty JSON of `value` that is as safe on a terminal as [`escape`]'s output: serde_json
/// escapes C0 controls inside strings but writes DEL, C1 controls and layout characters
/// raw, so those are rewritten as `\uXXXX` (the same JSON value). Raw newlines remain only
/// as the pretty-printer's own line breaks between tokens.
pub fn to_json_pretty<T: serde::Serialize>(value: &T) -> Result<String, serde_json::Error> {
    let text = serde_json::to_string_pretty(value)?;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c != '\n' && (c.is_control() || is_layout_char(c)) {
            // Every such character is in the Basic Multilingual Plane: one \uXXXX each.
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(escape("alice"), "alice");
        assert_eq!(escape("Zoë Müller-Łukasz"), "Zoë Müller-Łukasz");
        assert_eq!(escape(""), "");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escape("alice\nsigned in as root"),
            "alice\\nsigned in as root"
        );
        assert_eq!(escape("a\rb"), "a\\rb");
        assert_eq!(escape("a\tb\0"), "a\\tb\\0");
        assert_eq!(escape("\u{1b}[31mred\u{1b}[0m"), "\\u{1b}[31mred\\u{1b}[0m");
        assert_eq!(escape("\u{7f}"), "\\u{7f}");
        assert_eq!(escape("\u{9b}"), "\\u{9b}");
        assert_eq!(escape("\u{7}bell"), "\\u{7}bell");
    }

    #[test]
    fn bidi_overrides_are_escaped() {
        assert_eq!(escape("abc\u{202E}def"), "abc\\u{202e}def");
        assert_eq!(escape("\u{2066}x\u{2069}"), "\\u{2066}x\\u{2069}");
        assert_eq!(escape("a\u{2028}b"), "a\\u{2028}b");
    }

    #[test]
    fn backslash_is_escaped_so_escapes_cannot_be_faked() {
        // A literal backslash-n must not print like an escaped newline.
        assert_eq!(escape("a\\nb"), "a\\\\nb");
        assert_ne!(escape("a\\nb"), escape("a\nb"));
    }

    #[test]
    fn output_never_contains_control_characters() {
        let nasty: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let out = escape(&nasty);
        assert!(out.chars().all(|c| !c.is_control() && !is_layout_char(c)));
    }

    #[test]
    fn json_is_terminal_safe_and_the_same_value() {
        let v = serde_json::json!({
            "reason": "a\u{1b}[2J\nb\u{7f}\u{9b}c\u{202e}d\\e\"f",
            "n": [1, 2],
        });
        let text = to_json_pretty(&v).unwrap();
        assert!(
            text.chars()
                .all(|c| c == '\n' || (!c.is_control() && !is_layout_char(c))),
            "{text:?}"
        );
        assert!(text.contains("\\u007f") && text.contains("\\u009b") && text.contains("\\u202e"));
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn lists() {
        assert_eq!(escape_list(&[]), "(none)");
        assert_eq!(
            escape_list(&["alice".into(), "x\ny".into()]),
            "alice, x\\ny"
        );
    }
}
