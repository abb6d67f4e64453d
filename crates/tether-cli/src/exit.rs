//! Exit codes: each failure class has its own, so scripts can tell "nothing
//! is listening" from "it hangs" from "it will never work" without parsing
//! words. The README's table is the public contract.

use tether_probe::target::ProgramError;
use tether_probe::wait::{GaveUp, TargetOutcome, WaitReport};
use tether_resilience::failure::Symptom;

/// Every target reached the wanted state.
pub(crate) const READY: u8 = 0;
/// tether itself failed (a bug, or the runtime could not start).
pub(crate) const INTERNAL: u8 = 1;
/// Bad arguments: a malformed target, an unknown flag, a bad duration.
pub(crate) const USAGE: u8 = 2;
/// A target failed in a way waiting cannot fix (NXDOMAIN, HTTP 404, an
/// untrusted certificate, another protocol on the port).
pub(crate) const PERMANENT: u8 = 3;
/// Timed out while a target was there but did not answer (connect or
/// response timeouts, a listener that does not accept).
pub(crate) const UNRESPONSIVE: u8 = 4;
/// Timed out while a target answered "not ready" (an unwanted HTTP status or
/// body, an exit code, a stale heartbeat, an MCP error).
pub(crate) const UNHEALTHY: u8 = 5;
/// `--invert`: timed out while a target was still ready.
pub(crate) const STILL_READY: u8 = 6;
/// Timed out while nothing was there (connection refused, no such socket or
/// file, the name did not resolve yet).
pub(crate) const ABSENT: u8 = 124;
/// `tether ps`, `logs`, `stop`, ...: the stack is not running.
pub(crate) const NOT_RUNNING: u8 = 7;
/// The command after `--` exists but cannot be executed.
pub(crate) const CANNOT_EXECUTE: u8 = 126;
/// The command after `--` was not found.
pub(crate) const NOT_FOUND: u8 = 127;
/// The exit code for a command `find_program` rejected: not found (127) or
/// not executable (126), as a shell says.
pub(crate) fn cannot_run(why: &ProgramError) -> u8 {
    match why {
        ProgramError::NotFound { .. } | ProgramError::DoesNotExist { .. } => NOT_FOUND,
        ProgramError::PermissionDenied { .. }
        | ProgramError::IsADirectory { .. }
        | ProgramError::NotExecutable { .. }
        | ProgramError::Unusable { .. } => CANNOT_EXECUTE,
    }
}

/// Interrupted by SIGINT (128 + 2) or SIGTERM (128 + 15).
pub(crate) const SIGINT: u8 = 130;
pub(crate) const SIGTERM: u8 = 143;

/// The exit code of a finished wait. With several failed targets, the most
/// telling class wins, in this order: permanent, unresponsive, unhealthy,
/// absent, still ready.
pub(crate) fn of_report(report: &WaitReport, invert: bool) -> u8 {
    const ORDER: [u8; 5] = [PERMANENT, UNRESPONSIVE, UNHEALTHY, ABSENT, STILL_READY];
    let codes: Vec<u8> = report
        .targets
        .iter()
        .filter_map(|t| match &t.outcome {
            TargetOutcome::Reached { .. } => None,
            TargetOutcome::GaveUp {
                reason: GaveUp::Cancelled,
                ..
            } => None,
            TargetOutcome::GaveUp {
                reason: GaveUp::Permanent,
                ..
            } => Some(PERMANENT),
            TargetOutcome::GaveUp {
                reason: GaveUp::Timeout,
                last,
            } => Some(match (invert, last) {
                (true, _) => STILL_READY,
                (false, Some(Err(failure))) => of_symptom(failure.symptom()),
                (false, Some(Ok(_))) => UNHEALTHY,
                (false, None) => UNRESPONSIVE,
            }),
        })
        .collect();
    ORDER
        .into_iter()
        .find(|c| codes.contains(c))
        .unwrap_or(READY)
}

fn of_symptom(symptom: Symptom) -> u8 {
    match symptom {
        Symptom::Absent => ABSENT,
        Symptom::Unresponsive => UNRESPONSIVE,
        Symptom::Unhealthy | Symptom::Local => UNHEALTHY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tether_probe::Ready;
    use tether_probe::wait::TargetReport;
    use tether_resilience::{Cause, Failure, Phase};

    fn gave_up(reason: GaveUp, cause: Option<Cause>) -> TargetReport {
        TargetReport {
            attempts: 3,
            elapsed: Duration::from_secs(1),
            outcome: TargetOutcome::GaveUp {
                reason,
                last: cause.map(|c| Err(Failure::new(Phase::Connect, c, "x"))),
            },
        }
    }

    fn reached() -> TargetReport {
        TargetReport {
            attempts: 1,
            elapsed: Duration::ZERO,
            outcome: TargetOutcome::Reached {
                detail: "ok".into(),
            },
        }
    }

    fn report(targets: Vec<TargetReport>) -> WaitReport {
        WaitReport {
            targets,
            elapsed: Duration::from_secs(1),
        }
    }

    #[test]
    fn codes_by_class() {
        let t = GaveUp::Timeout;
        assert_eq!(of_report(&report(vec![reached()]), false), READY);
        assert_eq!(
            of_report(
                &report(vec![gave_up(t, Some(Cause::ConnectRefused))]),
                false
            ),
            ABSENT
        );
        assert_eq!(
            of_report(&report(vec![gave_up(t, Some(Cause::PathMissing))]), false),
            ABSENT
        );
        assert_eq!(
            of_report(
                &report(vec![gave_up(t, Some(Cause::ConnectTimeout))]),
                false
            ),
            UNRESPONSIVE
        );
        assert_eq!(
            of_report(&report(vec![gave_up(t, Some(Cause::Http(503)))]), false),
            UNHEALTHY
        );
        assert_eq!(
            of_report(
                &report(vec![gave_up(GaveUp::Permanent, Some(Cause::Http(404)))]),
                false
            ),
            PERMANENT
        );
        assert_eq!(
            of_report(&report(vec![gave_up(t, None)]), true),
            STILL_READY
        );
    }

    #[test]
    fn commands_that_cannot_run_exit_as_a_shell_says() {
        use std::os::unix::fs::PermissionsExt;
        use tether_probe::target::find_program;

        let code = |program: &str| cannot_run(&find_program(program).unwrap_err());
        assert_eq!(code("no-such-program-tether"), NOT_FOUND);
        assert_eq!(code("/nonexistent/tether/x"), NOT_FOUND);
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(code(&format!("{}/", dir.path().display())), CANNOT_EXECUTE);
        // The words of the message do not decide: this one says "not found"
        // but names a file that is there and cannot be run.
        let plain = dir.path().join("not found");
        std::fs::write(&plain, "x").unwrap();
        assert_eq!(code(&plain.display().to_string()), CANNOT_EXECUTE);
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(find_program(&plain.display().to_string()).is_ok());
    }

    #[test]
    fn the_most_telling_class_wins_and_cancelled_targets_do_not_count() {
        let mixed = report(vec![
            gave_up(GaveUp::Timeout, Some(Cause::ConnectRefused)),
            gave_up(GaveUp::Timeout, Some(Cause::ResponseTimeout)),
            reached(),
        ]);
        assert_eq!(of_report(&mixed, false), UNRESPONSIVE);
        let cancelled = report(vec![
            gave_up(GaveUp::Cancelled, None),
            gave_up(GaveUp::Permanent, Some(Cause::DnsNxdomain)),
        ]);
        assert_eq!(of_report(&cancelled, false), PERMANENT);
        let still = TargetReport {
            attempts: 9,
            elapsed: Duration::from_secs(1),
            outcome: TargetOutcome::GaveUp {
                reason: GaveUp::Timeout,
                last: Some(Ok(Ready::new("up"))),
            },
        };
        assert_eq!(of_report(&report(vec![still]), true), STILL_READY);
    }
}
