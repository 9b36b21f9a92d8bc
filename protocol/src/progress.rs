//! Progress and messages from user code, in any language: the run's
//! environment names a file (`PESC_PROGRESS_FILE`, in the app dir) and the
//! program appends lines to it. A line is a percentage (`42`, `42%`,
//! `42.5`), a percentage and a message (`42 training epoch 3`), or a
//! message alone (`loading data`). The node shows the last of each.

/// The environment variable naming the file.
pub const ENV: &str = "PESC_PROGRESS_FILE";
/// The file's name in the app dir.
pub const FILE_NAME: &str = ".pesc-progress";
/// Longest message kept (longer ones are cut).
pub const MAX_MESSAGE: usize = 200;

/// One line: (percent, message).
pub fn parse_line(line: &str) -> (Option<u8>, Option<String>) {
    let line = line.trim();
    if line.is_empty() {
        return (None, None);
    }
    let (first, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let pct = first
        .trim_end_matches('%')
        .parse::<f64>()
        .ok()
        .filter(|p| p.is_finite() && (0.0..=100.0).contains(p))
        .map(|p| p.floor() as u8);
    let message = match pct {
        Some(_) => rest.trim(),
        None => line,
    };
    let message = (!message.is_empty()).then(|| {
        let mut m: String = message.chars().filter(|c| !c.is_control()).collect();
        if m.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !m.is_char_boundary(cut) {
                cut -= 1;
            }
            m.truncate(cut);
        }
        m
    });
    (pct, message)
}

/// The last percentage and the last message among the file's complete
/// lines (a line still being written is left for the next look).
pub fn last_report(text: &str) -> (Option<u8>, Option<String>) {
    let complete = match text.rfind('\n') {
        Some(i) => &text[..i],
        None => return (None, None),
    };
    let (mut pct, mut msg) = (None, None);
    for line in complete.lines().rev() {
        let (p, m) = parse_line(line);
        pct = pct.or(p);
        msg = msg.or(m);
        if pct.is_some() && msg.is_some() {
            break;
        }
    }
    (pct, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_progress_messages_or_both() {
        assert_eq!(parse_line("42"), (Some(42), None));
        assert_eq!(parse_line("42.9%"), (Some(42), None));
        assert_eq!(
            parse_line("7 training epoch 3"),
            (Some(7), Some("training epoch 3".into()))
        );
        assert_eq!(
            parse_line("loading data"),
            (None, Some("loading data".into()))
        );
        assert_eq!(
            parse_line("150 too much"),
            (None, Some("150 too much".into()))
        );
        assert_eq!(parse_line("-3"), (None, Some("-3".into())));
        assert_eq!(parse_line("NaN"), (None, Some("NaN".into())));
        assert_eq!(parse_line("   "), (None, None));
        let long = parse_line(&"é".repeat(300)).1.unwrap();
        assert!(long.len() <= MAX_MESSAGE);
        assert_eq!(parse_line("a\u{1b}[31mred").1.unwrap(), "a[31mred");
    }

    #[test]
    fn the_last_complete_lines_count() {
        let text = "10 start\n20\nhalf way\n30";
        assert_eq!(last_report(text), (Some(20), Some("half way".into())));
        assert_eq!(last_report("no newline yet"), (None, None));
        assert_eq!(last_report(""), (None, None));
        assert_eq!(last_report("5 a\n6 b\n"), (Some(6), Some("b".into())));
    }
}
