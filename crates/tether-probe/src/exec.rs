//! The exec probe: run a command (argv, never a shell) and read its exit
//! code. The command runs in a process group of its own, and whatever is left
//! of the group is killed when the attempt ends, so nothing outlives it.

use std::process::Stdio;
use std::time::Duration;

use tether_process::Signal;
use tether_resilience::{Cause, Failure, Phase, Verdict};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;

use crate::Ready;
use crate::attempt::Attempt;
use crate::target::ExecSpec;

/// How much of each output stream is kept for the diagnosis.
const TAIL: usize = 2048;

pub(crate) async fn probe(spec: &ExecSpec, attempt: Attempt) -> Result<Ready, Failure> {
    let what = format!("command '{}'", spec.argv.join(" "));
    let mut command = std::process::Command::new(&spec.argv[0]);
    command
        .args(&spec.argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = tether_process::spawn(&mut command).map_err(|e| {
        let failure = Failure::from_io(&e, Phase::Spawn, &what);
        let verdict = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                Verdict::Permanent
            }
            _ => Verdict::Transient,
        };
        Failure {
            cause: Cause::ProcessNotStarted,
            verdict,
            ..failure
        }
    })?;
    // On timeout or cancellation, dropping `child` kills its whole group.
    let stdout = child.stdout.take().map(tail_of);
    let stderr = child.stderr.take().map(tail_of);

    let waiting = async {
        child
            .wait()
            .await
            .map_err(|e| Failure::from_io(&e, Phase::Exit, &what))
    };
    let status = match attempt.phase(Phase::Exit, &what, waiting).await {
        Ok(status) => status,
        Err(failure) if failure.cause.is_timeout() => {
            let detail = format!(
                "{what}: did not exit within {}; its process group was killed",
                tether_resilience::failure::human_duration(attempt.budget())
            );
            return Err(failure.with_detail(detail));
        }
        Err(failure) => return Err(failure),
    };
    // Whatever the command left running in its group goes with it.
    let _ = child.signal_group(Signal::KILL);
    let stderr = collect(stderr).await;
    let stdout = collect(stdout).await;

    if let tether_process::Exit::Code(code) = status
        && spec.codes.contains(&code)
    {
        return Ok(Ready::new(format!("{what} exited with status {code}")));
    }
    let how = status.to_string();
    let wanted = spec
        .codes
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(" or ");
    let output = last_line(&stderr).or_else(|| last_line(&stdout));
    let output = output.map(|l| format!("; output: {l}")).unwrap_or_default();
    Err(Failure::new(
        Phase::Exit,
        Cause::ProbeUnhealthy,
        format!("{what} {how} (wanted {wanted}){output}"),
    ))
}

/// Reads a stream to its end, keeping the last `TAIL` bytes.
fn tail_of(mut stream: impl AsyncRead + Unpin + Send + 'static) -> JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut buf = [0u8; 1024];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > TAIL {
                kept.drain(..kept.len() - TAIL);
            }
        }
        kept
    })
}

/// The collected tail; a stream still held open by an escaped process is
/// given up after a moment.
async fn collect(reader: Option<JoinHandle<Vec<u8>>>) -> Vec<u8> {
    let Some(mut reader) = reader else {
        return Vec::new();
    };
    match tokio::time::timeout(Duration::from_millis(100), &mut reader).await {
        Ok(Ok(tail)) => tail,
        _ => {
            reader.abort();
            Vec::new()
        }
    }
}

fn last_line(output: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(output);
    let line = text.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    let mut line: String = line.chars().take(300).collect();
    if line.len() < text.trim_end().lines().last().map_or(0, str::len) {
        line.push('…');
    }
    Some(line)
}
