//! What the kernel takes at exec, checked when the file is loaded rather
//! than found out at a spawn: no NUL byte in an argument, a variable or a
//! path; at most `MAX_ARG_STRLEN` bytes in one argument or `KEY=VALUE`
//! string; a bound on a program's arguments and environment together. And
//! which stop signals end a process.

/// The longest argument or `KEY=VALUE` string exec takes: Linux's
/// `MAX_ARG_STRLEN` (32 pages of 4 KiB, 131072 bytes) counts the closing NUL.
pub(crate) const MAX_STRING: usize = 128 * 1024 - 1;

/// The most bytes a service's `command`, `pre_start` and `env` may take
/// together (each string with its NUL). The kernel's own limit, `ARG_MAX`,
/// is a quarter of the stack limit (2 MiB with the usual 8 MiB) and also
/// holds tether's own environment, which every child inherits; half of it
/// leaves room for that.
pub(crate) const MAX_TOTAL: usize = 1024 * 1024;

/// The end of the message for a NUL byte in an argument or a variable.
pub(crate) const NUL_IN_ARG: &str =
    "contains a NUL byte, which no program argument or environment value can hold";

/// The message for a NUL byte in a path.
pub(crate) const NUL_IN_PATH: &str = "contains a NUL byte, which no path can hold";

/// The message for a NUL byte in a probe target.
pub(crate) const NUL_IN_TARGET: &str =
    "contains a NUL byte, which no target (address, path or program argument) can hold";

/// The end of the message for a string of `len` bytes, longer than
/// [`MAX_STRING`].
pub(crate) fn too_long(len: usize) -> String {
    format!(
        "is {} long; the kernel takes at most 128 KiB per argument or variable",
        size(len)
    )
}

/// The message for `what` (`command, pre_start and env`) taking `total`
/// bytes, more than [`MAX_TOTAL`].
pub(crate) fn too_much(what: &str, total: usize) -> String {
    format!(
        "{what} together are {}; tether takes at most 1 MiB, since the kernel takes about 2 MiB \
         of arguments and environment per program, tether's own environment included",
        size(total)
    )
}

/// The bytes exec copies for these strings: each with its NUL.
pub(crate) fn exec_bytes<'a>(strings: impl IntoIterator<Item = &'a str>) -> usize {
    strings.into_iter().map(|s| s.len() + 1).sum()
}

/// The bytes exec copies for these variables: each `KEY=VALUE` with its NUL.
pub(crate) fn env_bytes(vars: &[(String, String)]) -> usize {
    vars.iter().map(|(k, v)| k.len() + 1 + v.len() + 1).sum()
}

/// A size in human units: `512 bytes`, `200.0 KiB`, `10.0 MiB`.
pub(crate) fn size(bytes: usize) -> String {
    const KIB: f64 = 1024.0;
    // Exact enough: sizes here are far below 2^52.
    let b = bytes as f64;
    if bytes < 1024 {
        format!("{bytes} bytes")
    } else if b < KIB * KIB {
        format!("{:.1} KiB", b / KIB)
    } else {
        format!("{:.1} MiB", b / (KIB * KIB))
    }
}

/// Signals whose default action does not end a process, with what they do;
/// Linux numbers, as in tether-process.
const NOT_ENDING: &[(i32, &str, &str)] = &[
    (17, "SIGCHLD", "is ignored by default"),
    (18, "SIGCONT", "only resumes a stopped process"),
    (19, "SIGSTOP", "only pauses a process"),
    (20, "SIGTSTP", "only pauses a process"),
    (21, "SIGTTIN", "only pauses a process"),
    (22, "SIGTTOU", "only pauses a process"),
    (23, "SIGURG", "is ignored by default"),
    (28, "SIGWINCH", "is ignored by default"),
];

/// What to use instead.
const ENDING: &str = "use SIGTERM, SIGINT, SIGQUIT, SIGHUP or SIGKILL";

/// Why `text` (a signal name, with or without `SIG`, any case) cannot stop
/// a service, if it is one of the signals that do not end a process.
pub(crate) fn not_ending_name(text: &str) -> Option<String> {
    let upper = text.trim().to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    NOT_ENDING
        .iter()
        .find(|(_, n, _)| *n == name)
        .map(|(_, name, what)| format!("{name} {what}; {ENDING}"))
}

/// Why signal number `n` cannot stop a service, if it does not end a
/// process.
pub(crate) fn not_ending_number(n: i32) -> Option<String> {
    NOT_ENDING
        .iter()
        .find(|(number, _, _)| *number == n)
        .map(|(n, name, what)| format!("signal {n} ({name}) {what}; {ENDING}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_human_units() {
        assert_eq!(size(512), "512 bytes");
        assert_eq!(size(200 * 1024), "200.0 KiB");
        assert_eq!(size(131_072), "128.0 KiB");
        assert_eq!(size(10 * 1024 * 1024), "10.0 MiB");
        assert_eq!(size(10_000_000), "9.5 MiB");
    }

    #[test]
    fn exec_counts_every_string_with_its_nul() {
        assert_eq!(exec_bytes(["sh", "-c"]), 6);
        assert_eq!(env_bytes(&[("A".into(), "12".into())]), 5);
    }

    #[test]
    fn signals_that_do_not_end_a_process_by_name_and_number() {
        assert_eq!(
            not_ending_name("stop").as_deref(),
            Some("SIGSTOP only pauses a process; use SIGTERM, SIGINT, SIGQUIT, SIGHUP or SIGKILL")
        );
        assert!(not_ending_name("SIGTERM").is_none());
        assert_eq!(
            not_ending_number(18).as_deref(),
            Some(
                "signal 18 (SIGCONT) only resumes a stopped process; use SIGTERM, SIGINT, \
                 SIGQUIT, SIGHUP or SIGKILL"
            )
        );
        // The names match tether-process's table where it has them.
        for (n, name, _) in NOT_ENDING {
            if let Some(known) = tether_process::signal_name(*n) {
                assert_eq!(known, *name);
            }
        }
        assert!(not_ending_number(9).is_none());
    }
}
