//! One picture per scenario: published, confirmed and consumed messages per 100 ms over
//! time, with the fault's start and end marked, as a self-contained SVG file that any
//! browser (and GitHub's README view) shows without scripts.

use std::fmt::Write as _;
use std::path::Path;

use crate::check::Window;
use crate::record::{BUCKET, Snapshot};

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 320.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 40.0;
/// Line colours: published, confirmed, consumed.
const SERIES: [(&str, &str); 3] = [
    ("published", "#4c78a8"),
    ("confirmed", "#54a24b"),
    ("consumed", "#f58518"),
];

/// Writes the chart of `snap` to `path` (directories are created).
pub fn write(
    path: &Path,
    title: &str,
    snap: &Snapshot,
    window: Window,
    rate: u32,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, svg(title, snap, window, rate))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG text.
pub fn svg(title: &str, snap: &Snapshot, window: Window, rate: u32) -> String {
    let per_bucket = f64::from(rate) * BUCKET.as_secs_f64();
    let peak = snap
        .buckets
        .iter()
        .flat_map(|row| row.iter().copied())
        .max()
        .unwrap_or(0);
    // The y axis shows at least twice the planned rate, so bursts after a recovery fit.
    let y_max = (f64::from(peak).max(per_bucket * 2.0)).max(1.0);
    let buckets = snap.buckets.len().max(1);
    let total_secs = buckets as f64 * BUCKET.as_secs_f64();
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x_of = |secs: f64| LEFT + plot_w * (secs / total_secs).clamp(0.0, 1.0);
    let y_of = |count: f64| TOP + plot_h * (1.0 - count / y_max);

    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        out,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/><text x="{LEFT}" y="20" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    // The fault, shaded, with its ends marked.
    let (fs, fe) = (window.start.as_secs_f64(), window.end.as_secs_f64());
    let (xs, xe) = (x_of(fs), x_of(fe));
    let _ = write!(
        out,
        r##"<rect x="{xs:.1}" y="{TOP}" width="{:.1}" height="{plot_h}" fill="#e45756" fill-opacity="0.12"/>"##,
        (xe - xs).max(1.0)
    );
    for (x, label) in [
        (xs, format!("fault {fs:.1}s")),
        (xe, format!("end {fe:.1}s")),
    ] {
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#e45756" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" fill="#e45756">{label}</text>"##,
            TOP + plot_h,
            x + 3.0,
            TOP + 12.0
        );
    }
    // Axes with a few ticks.
    let _ = write!(
        out,
        r##"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#333"/>"##,
        TOP + plot_h,
        LEFT + plot_w,
        TOP + plot_h,
        TOP + plot_h
    );
    let step = if total_secs > 60.0 { 10.0 } else { 5.0 };
    let mut t = 0.0;
    while t <= total_secs {
        let x = x_of(t);
        let _ = write!(
            out,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{t:.0}s</text>"#,
            TOP + plot_h + 16.0
        );
        t += step;
    }
    for k in 0..=4 {
        let count = y_max * f64::from(k) / 4.0;
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{:.0}</text>"#,
            LEFT - 6.0,
            y_of(count) + 4.0,
            count
        );
    }
    let _ = write!(
        out,
        r#"<text x="12" y="{:.1}" transform="rotate(-90 12 {:.1})" text-anchor="middle">messages per 100 ms</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    // The three series.
    for (column, (label, colour)) in SERIES.iter().enumerate() {
        let mut points = String::new();
        for (i, row) in snap.buckets.iter().enumerate() {
            let count = row.get(column).copied().unwrap_or(0);
            let x = x_of((i as f64 + 0.5) * BUCKET.as_secs_f64());
            let _ = write!(points, "{x:.1},{:.1} ", y_of(f64::from(count)));
        }
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            points.trim_end()
        );
        let lx = LEFT + plot_w - 300.0 + 100.0 * column as f64;
        let _ = write!(
            out,
            r#"<rect x="{lx:.1}" y="10" width="14" height="4" fill="{colour}"/><text x="{:.1}" y="16">{label}</text>"#,
            lx + 18.0
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn draws_three_series_and_the_fault() {
        let snap = Snapshot {
            buckets: vec![[200, 190, 180], [0, 0, 0], [210, 220, 230]],
            ..Snapshot::default()
        };
        let window = Window {
            start: Duration::from_millis(100),
            end: Duration::from_millis(200),
            recover_from: Duration::from_millis(100),
        };
        let text = svg("kill <x>", &snap, window, 2_000);
        assert!(text.starts_with("<svg"));
        assert!(text.trim_end().ends_with("</svg>"));
        assert_eq!(text.matches("<polyline").count(), 3);
        assert!(text.contains("kill &lt;x&gt;"));
        assert!(text.contains("fault 0.1s") && text.contains("end 0.2s"));
    }
}
