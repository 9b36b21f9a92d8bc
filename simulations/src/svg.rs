//! Small SVG charts (line series, histograms), written by hand: no plotting
//! dependency, and the same input gives the same bytes.

use std::fmt::Write;

const W: f64 = 720.0;
const H: f64 = 360.0;
const L: f64 = 70.0;
const R: f64 = 20.0;
const T: f64 = 40.0;
const B: f64 = 50.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let e = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * e >= v {
            return m * e;
        }
    }
    10.0 * e
}

fn label(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn frame(out: &mut String, title: &str, xl: &str, yl: &str, xmax: f64, ymax: f64) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{H}" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>
"#,
        W / 2.0,
        esc(title),
        L + (W - L - R) / 2.0,
        H - 10.0,
        esc(xl),
        T + (H - T - B) / 2.0,
        T + (H - T - B) / 2.0,
        esc(yl)
    );
    for i in 0..=5 {
        let f = i as f64 / 5.0;
        let y = H - B - f * (H - T - B);
        let x = L + f * (W - L - R);
        let _ = write!(
            out,
            r##"<line x1="{L}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>
<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>
"##,
            W - R,
            L - 6.0,
            y + 4.0,
            label(f * ymax),
            H - B + 16.0,
            label(f * xmax)
        );
    }
    let _ = write!(
        out,
        r#"<rect x="{L}" y="{T}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        W - L - R,
        H - T - B
    );
}

/// Lines over a shared x axis.
pub fn lines(title: &str, xl: &str, yl: &str, series: &[Series]) -> String {
    let xmax = nice_max(
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .fold(0.0, f64::max),
    );
    let ymax = nice_max(
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0, f64::max),
    );
    let mut out = String::new();
    frame(&mut out, title, xl, yl, xmax, ymax);
    for (i, s) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| {
                format!(
                    "{:.1},{:.1}",
                    L + x / xmax * (W - L - R),
                    H - B - y / ymax * (H - T - B)
                )
            })
            .collect();
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{}"/>
<rect x="{}" y="{}" width="10" height="10" fill="{c}"/><text x="{}" y="{}">{}</text>
"#,
            pts.join(" "),
            L + 10.0,
            T + 8.0 + 16.0 * i as f64,
            L + 24.0,
            T + 17.0 + 16.0 * i as f64,
            esc(&s.name)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// A histogram of `values` in `bins` equal bins.
pub fn histogram(title: &str, xl: &str, values: &[f64], bins: usize) -> String {
    let xmax = nice_max(values.iter().copied().fold(0.0, f64::max));
    let mut counts = vec![0usize; bins.max(1)];
    for &v in values {
        let i = ((v / xmax) * bins as f64).floor() as usize;
        counts[i.min(bins - 1)] += 1;
    }
    let ymax = nice_max(*counts.iter().max().unwrap_or(&1) as f64);
    let mut out = String::new();
    frame(&mut out, title, xl, "count", xmax, ymax);
    let bw = (W - L - R) / bins as f64;
    for (i, &c) in counts.iter().enumerate() {
        let h = c as f64 / ymax * (H - T - B);
        let _ = write!(
            out,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="#1f77b4"/>"##,
            L + i as f64 * bw + 1.0,
            H - B - h,
            (bw - 2.0).max(1.0)
        );
    }
    out.push_str("</svg>\n");
    out
}
