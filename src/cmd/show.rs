//! How the CLI shows task and service state to a person: ages instead of epoch milliseconds,
//! health next to the state, and multi-line errors folded onto one table line.

use dcpp_reconciler::{DesiredState, Health, Task, TaskState};

/// A duration in milliseconds as the largest whole unit, e.g. `8s`, `2m`, `3h`, `4d`.
pub fn span(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// How long ago `then` (ms since the epoch) was, seen at `now`: `just now`, `2m ago`.
pub fn ago(then: u64, now: u64) -> String {
    let d = now.saturating_sub(then);
    if d < 1000 {
        "just now".into()
    } else {
        format!("{} ago", span(d))
    }
}

/// Folds a multi-line message onto one line: trimmed non-empty lines joined with ` | `.
pub fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The state column of a task: `running (healthy)`, `pending (restarting in 8s)`, `complete`.
pub fn task_state(t: &Task, now: u64) -> String {
    let mut s = t.state.to_string();
    let note = match t.state {
        TaskState::Running => match t.health {
            Health::Unknown => None,
            Health::Starting => Some("health: starting".to_string()),
            Health::Healthy => Some("healthy".to_string()),
            Health::Unhealthy => Some("unhealthy".to_string()),
        },
        _ if t.desired == DesiredState::Running && !t.state.is_terminal() => t
            .not_before
            .filter(|nb| *nb > now)
            .map(|nb| format!("restarting in {}", span(nb - now + 999))),
        _ => None,
    };
    if let Some(n) = note {
        s.push_str(&format!(" ({n})"));
    }
    s
}

/// The message column of a task: its error, or its status message, on one line. A pending
/// restart's message carries the raw deadline; the state column shows it as a countdown.
pub fn task_message(t: &Task) -> String {
    if let Some(e) = &t.error {
        return one_line(e);
    }
    if t.message.starts_with("restart delayed until ") {
        return String::new();
    }
    one_line(&t.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_use_the_largest_whole_unit() {
        assert_eq!(span(0), "0s");
        assert_eq!(span(8_400), "8s");
        assert_eq!(span(125_000), "2m");
        assert_eq!(span(3 * 3_600_000 + 5), "3h");
        assert_eq!(span(50 * 3_600_000), "2d");
        assert_eq!(ago(1_000, 1_500), "just now");
        assert_eq!(ago(1_000, 121_000), "2m ago");
    }

    #[test]
    fn multi_line_errors_fold_onto_one_line() {
        assert_eq!(
            one_line("exited with code 1; last log lines:\n  boom\n\nbye\n"),
            "exited with code 1; last log lines: | boom | bye"
        );
    }

    #[test]
    fn state_shows_health_and_restart_countdown() {
        let mut t: Task = serde_json::from_value(serde_json::json!({
            "id": 7, "service": "s_web", "slot": {"replica": 1}, "spec_version": 1, "image": "i",
            "reservations": {"cpu_millis": 0, "memory": 0}, "node": null,
            "desired": "running", "state": "running", "container_id": null,
            "health": "healthy", "exit_code": null, "created_at": 0, "updated_at": 0,
            "started_at": null, "finished_at": null, "not_before": null, "message": "",
            "error": null, "restart_count": 0, "restarts": [], "fast_failures": 0
        }))
        .unwrap();
        assert_eq!(task_state(&t, 0), "running (healthy)");
        t.state = TaskState::Pending;
        t.not_before = Some(10_000);
        t.message = "restart delayed until 10000".into();
        assert_eq!(task_state(&t, 2_000), "pending (restarting in 8s)");
        assert_eq!(task_message(&t), "");
        assert_eq!(task_state(&t, 11_000), "pending");
    }
}
