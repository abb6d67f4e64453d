//! "Did you mean": the closest known word to a mistyped one.

/// The candidate closest to `input` by edit distance, if it is close enough
/// to be a likely typo: at most 2 edits, and at most half the letters of the
/// longer word. Case, and `-` for `_`, do not count as differences.
/// Ties go to the earlier candidate.
pub(crate) fn closest<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let input = normalize(input);
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        let distance = strsim::levenshtein(&input, &normalize(candidate));
        let longer = input.chars().count().max(candidate.chars().count());
        let close = distance <= 2 && distance * 2 <= longer;
        if close && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, candidate)| candidate)
}

/// `; did you mean 'X'?` when a candidate is close, else nothing.
pub(crate) fn did_you_mean<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> String {
    match closest(input, candidates) {
        Some(candidate) => format!("; did you mean '{candidate}'?"),
        None => String::new(),
    }
}

fn normalize(word: &str) -> String {
    word.to_ascii_lowercase().replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &[&str] = &["command", "cwd", "env", "env_file", "stop_grace"];

    #[test]
    fn finds_typos() {
        assert_eq!(closest("comand", KEYS.iter().copied()), Some("command"));
        assert_eq!(closest("Command", KEYS.iter().copied()), Some("command"));
        assert_eq!(
            closest("stop-grace", KEYS.iter().copied()),
            Some("stop_grace")
        );
        assert_eq!(closest("envfile", KEYS.iter().copied()), Some("env_file"));
    }

    #[test]
    fn ignores_words_that_are_not_close() {
        assert_eq!(closest("image", KEYS.iter().copied()), None);
        // Three edits, or two on a three-letter word, make a different word.
        assert_eq!(closest("ab", ["env"]), None);
        assert_eq!(closest("foo", ["fpe"]), None);
        assert_eq!(closest("dbb", ["db"]), Some("db"));
        assert_eq!(did_you_mean("xyz", KEYS.iter().copied()), "");
    }

    #[test]
    fn prefers_the_nearest_then_the_first() {
        assert_eq!(closest("cwdd", ["command", "cwd"]), Some("cwd"));
        assert_eq!(closest("ab", ["abc", "abd"]), Some("abc"));
    }
}
