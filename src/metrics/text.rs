//! The two text formats a scraper may ask for.
//!
//! prometheus-client writes OpenMetrics, which Prometheus asks for by
//! `Accept` header. Everything else (curl, `promtool check metrics`, older
//! scrapers) expects the classic text format 0.0.4, as the Go client serves
//! it by default: the two differ, for what astban exports, only in that a
//! classic counter's `# HELP`/`# TYPE` name carries the `_total` of its
//! samples, and in OpenMetrics' `# UNIT` and `# EOF` lines.

/// `Content-Type` of OpenMetrics text.
pub(super) const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `Content-Type` of the classic text format.
pub(super) const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics.
pub(super) fn wants_openmetrics(accept: &str) -> bool {
    accept
        .split(',')
        .any(|media| media.trim().starts_with("application/openmetrics-text"))
}

/// OpenMetrics text as the classic format.
pub(super) fn to_classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len() + 256);
    // `# HELP` comes before `# TYPE`: held until the type says whether the
    // name needs its `_total`.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, help.take(), "");
            help = rest.split_once(' ').or(Some((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let suffix = if kind == "counter" { "_total" } else { "" };
            match help.take() {
                Some((h, text)) if h == name => flush_help(&mut out, Some((h, text)), suffix),
                other => flush_help(&mut out, other, ""),
            }
            out.push_str("# TYPE ");
            out.push_str(name);
            out.push_str(suffix);
            out.push(' ');
            out.push_str(kind);
            out.push('\n');
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else {
            flush_help(&mut out, help.take(), "");
            out.push_str(line);
            out.push('\n');
        }
    }
    flush_help(&mut out, help, "");
    out
}

fn flush_help(out: &mut String, help: Option<(&str, &str)>, suffix: &str) {
    if let Some((name, text)) = help {
        out.push_str("# HELP ");
        out.push_str(name);
        out.push_str(suffix);
        out.push(' ');
        out.push_str(text);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_their_total_and_the_openmetrics_lines_go() {
        let om = "# HELP astban_bans Bans made.\n# TYPE astban_bans counter\n\
                  astban_bans_total{reason=\"manual\"} 1\n\
                  # HELP astban_bans_active Bans in force.\n# TYPE astban_bans_active gauge\n\
                  # UNIT astban_bans_active bans\nastban_bans_active 1\n# EOF\n";
        assert_eq!(
            to_classic(om),
            "# HELP astban_bans_total Bans made.\n# TYPE astban_bans_total counter\n\
             astban_bans_total{reason=\"manual\"} 1\n\
             # HELP astban_bans_active Bans in force.\n# TYPE astban_bans_active gauge\n\
             astban_bans_active 1\n"
        );
    }

    #[test]
    fn histograms_are_the_same_in_both() {
        let om = "# HELP h Latency.\n# TYPE h histogram\nh_sum 0.5\nh_count 1\n\
                  h_bucket{le=\"1.0\"} 1\nh_bucket{le=\"+Inf\"} 1\n# EOF\n";
        assert_eq!(to_classic(om), om.trim_end_matches("# EOF\n"));
    }

    #[test]
    fn prometheus_accept_headers_ask_for_openmetrics() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(prometheus));
        assert!(!wants_openmetrics("*/*"));
        assert!(!wants_openmetrics("text/plain"));
    }
}
