//! `tug schedule next`: preview when an expression fires, computed locally.

use anyhow::Context;
use jiff::Timestamp;
use tug_core::schedule::Schedule;
use tug_core::timefmt::rfc3339_in;

use super::print_json;

/// `tug schedule` subcommands.
#[derive(clap::Subcommand)]
pub enum ScheduleCommand {
    /// Print the next fire instants of an expression.
    #[command(after_help = "Examples:\n  tug schedule next '*/15 * * * *'\n  tug schedule next '30 2 * * *' --tz America/New_York --after 2026-03-07T00:00:00Z --count 3\n  tug schedule next 'R5/2026-11-25T08:00:00+08:00/P1D' --json\n\nFires moved by a DST change are marked (DST).")]
    Next {
        /// A cron expression or ISO 8601 repeating interval.
        expr: String,
        /// IANA time zone.
        #[arg(long, default_value = "UTC")]
        tz: String,
        /// Start after this instant (RFC 3339); now when absent.
        #[arg(long)]
        after: Option<String>,
        /// How many fires.
        #[arg(long, default_value_t = 5)]
        count: usize,
        /// Print JSON: {"fires": [...], ...}.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `tug schedule` subcommand.
pub fn run(cmd: ScheduleCommand) -> anyhow::Result<()> {
    let ScheduleCommand::Next { expr, tz, after, count, json } = cmd;
    let sched = Schedule::parse(&expr, &tz)?;
    let zone = jiff::tz::TimeZone::get(&tz).with_context(|| format!("unknown time zone {tz:?}"))?;
    let mut t = match after {
        Some(a) => a.parse::<Timestamp>().with_context(|| format!("--after {a:?} is not an RFC 3339 instant (e.g. 2026-01-01T00:00:00Z)"))?,
        None => Timestamp::now(),
    };
    let mut fires = Vec::new();
    while fires.len() < count {
        let Some(f) = sched.next_after(t) else { break };
        fires.push((rfc3339_in(f.at, &zone), f.dst_adjusted));
        t = f.at;
    }
    if json {
        return print_json(&serde_json::json!({
            "expr": expr,
            "tz": tz,
            "fires": fires.iter().map(|f| f.0.clone()).collect::<Vec<_>>(),
            "dst_adjusted": fires.iter().map(|f| f.1).collect::<Vec<_>>(),
        }));
    }
    if fires.is_empty() {
        println!("{expr} never fires after that instant");
    }
    for (at, dst) in fires {
        println!("{at}{}", if dst { "  (DST)" } else { "" });
    }
    Ok(())
}
