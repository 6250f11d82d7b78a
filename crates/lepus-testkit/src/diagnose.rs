//! Why a node did not come up, read from what it left behind.
//!
//! A taken port shows in two places: the AMQP or management listener logs `eaddrinuse`
//! into the node's log, while a taken distribution port stops the Erlang VM before logging
//! is set up, so only the crash dump's slogan names it.

use std::path::Path;

/// The cause of a failed boot, and whether it was a port held by someone else.
pub(crate) fn diagnose(texts: &[&str], observed: &str) -> (String, bool) {
    for text in texts {
        if let Some(port) = number_after(text, "dist_port_already_used,") {
            return (
                format!("its distribution port {port} is already in use"),
                true,
            );
        }
    }
    for text in texts {
        if let Some(at) = text.find("},eaddrinuse") {
            let before = text.get(..at).unwrap_or_default();
            let port = before.rsplit(',').next().unwrap_or_default();
            return (format!("port {port} is already in use"), true);
        }
        if text.contains("eaddrinuse") {
            return ("one of its ports is already in use".to_owned(), true);
        }
    }
    for text in texts {
        if let Some(line) = text.lines().find(|l| l.starts_with("Slogan:")) {
            return (line.chars().take(300).collect(), false);
        }
    }
    (observed.to_owned(), false)
}

fn number_after(text: &str, marker: &str) -> Option<u16> {
    let at = text.find(marker)? + marker.len();
    let digits: String = text
        .get(at..)?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

pub(crate) fn read_from(path: &Path, offset: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(0);
    String::from_utf8_lossy(bytes.get(start..).unwrap_or(&bytes)).into_owned()
}

pub(crate) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(n);
    let mut out = lines
        .iter()
        .skip(skip)
        .copied()
        .collect::<Vec<_>>()
        .join("\n");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnoses_a_taken_amqp_port() {
        let log = "reason: {listen_error,{acceptor,{127,0,0,1},5672},eaddrinuse}";
        assert_eq!(
            diagnose(&[log], "x"),
            ("port 5672 is already in use".to_owned(), true)
        );
    }

    #[test]
    fn diagnoses_a_taken_dist_port() {
        let slogan = "Slogan: Kernel pid terminated ({dist_port_already_used,25672,not_erlang,\"localhost\"})";
        assert_eq!(
            diagnose(&["", slogan], "x"),
            (
                "its distribution port 25672 is already in use".to_owned(),
                true
            )
        );
    }

    #[test]
    fn falls_back_to_what_was_observed() {
        assert_eq!(
            diagnose(&["all fine"], "timed out"),
            ("timed out".to_owned(), false)
        );
    }

    #[test]
    fn keeps_the_last_lines() {
        assert_eq!(last_lines("a\nb\nc", 2), "b\nc\n");
    }
}
