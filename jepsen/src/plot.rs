//! A PNG of the run: throughput (top) and latency (bottom) over time, with
//! the nemesis windows shaded. Built with plotters' bitmap backend only, so
//! there is no text (no fonts are needed): axes and tick marks are drawn,
//! the x axis is seconds since the start (a tick every 10 s, a longer one
//! every 60 s).
//!
//! Top panel: completed client operations per second: ok (green), fail
//! (red), info/indeterminate (orange). Bottom panel: per second, the median
//! (blue) and maximum (purple) latency of the operations that completed in
//! it, in milliseconds (the y range is capped at the run's p99 × 2).
//! Shading: one colour per nemesis kind. The y tick marks are at quarters of
//! each panel's range; [`render`] returns those ranges ([`PlotStats`]) so the
//! caller can print them next to the picture.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use plotters::prelude::*;

use crate::history::{nemesis_windows, Op, OpKind};

/// Numbers behind the plot (the plot itself carries no text).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PlotStats {
    pub seconds: u64,
    pub max_ops_per_sec: u64,
    pub latency_cap_ms: f64,
    pub nemesis_windows: Vec<(String, f64, f64)>,
}

const W: u32 = 1400;
const H: u32 = 800;

fn shade(name: &str) -> RGBAColor {
    const PALETTE: [(u8, u8, u8); 6] = [
        (200, 200, 200),
        (255, 200, 150),
        (170, 200, 255),
        (200, 255, 190),
        (240, 180, 240),
        (255, 240, 150),
    ];
    let base = name.split(['-', ':']).next().unwrap_or(name);
    let h = base
        .bytes()
        .fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
    let (r, g, b) = PALETTE[(h as usize) % PALETTE.len()];
    RGBColor(r, g, b).mix(0.55)
}

/// Writes the PNG to `path`; returns the numbers the axes stand for.
pub fn render(ops: &[Op], path: &Path) -> anyhow::Result<PlotStats> {
    let end_ns = ops.iter().map(|o| o.time_ns).max().unwrap_or(0);
    let secs = (end_ns / 1_000_000_000 + 1).max(1);

    // Pair invocations with completions per process.
    let mut pending: HashMap<&str, &Op> = HashMap::new();
    let mut ok = vec![0u64; secs as usize];
    let mut fail = vec![0u64; secs as usize];
    let mut info = vec![0u64; secs as usize];
    let mut lat: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for op in ops.iter().filter(|o| !o.is_nemesis()) {
        match op.kind {
            OpKind::Invoke => {
                pending.insert(op.process.as_str(), op);
            }
            k => {
                let Some(inv) = pending.remove(op.process.as_str()) else {
                    continue; // observations are not client ops
                };
                let b = (op.time_ns / 1_000_000_000) as usize;
                match k {
                    OpKind::Ok => ok[b] += 1,
                    OpKind::Fail => fail[b] += 1,
                    _ => info[b] += 1,
                }
                let ms = op.time_ns.saturating_sub(inv.time_ns) as f64 / 1e6;
                lat.entry(b as u64).or_default().push(ms);
            }
        }
    }
    let mut all: Vec<f64> = lat.values().flatten().copied().collect();
    all.sort_by(|a, b| a.total_cmp(b));
    let p99 = all
        .get(((all.len() as f64) * 0.99) as usize)
        .or(all.last())
        .copied()
        .unwrap_or(1.0);
    let lat_cap = (p99 * 2.0).max(10.0);
    let max_tp = ok
        .iter()
        .zip(&fail)
        .zip(&info)
        .map(|((a, b), c)| a.max(b).max(c))
        .copied()
        .max()
        .unwrap_or(0)
        .max(1);
    let windows = nemesis_windows(ops);

    let root = BitMapBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(H / 2);
    let x_end = secs as f64;

    for (is_top, panel, y_max) in [(true, &top, max_tp as f64 * 1.1), (false, &bottom, lat_cap)] {
        let mut chart = ChartBuilder::on(panel)
            .margin(20)
            .set_all_label_area_size(0)
            .build_cartesian_2d(0f64..x_end, 0f64..y_max)?;
        // Nemesis windows.
        chart.draw_series(windows.iter().map(|(name, s, e)| {
            Rectangle::new(
                [(*s as f64 / 1e9, 0.0), (*e as f64 / 1e9, y_max)],
                shade(name).filled(),
            )
        }))?;
        // Axes and ticks.
        let black = BLACK.stroke_width(2);
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 0.0), (x_end, 0.0)],
            black,
        )))?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 0.0), (0.0, y_max)],
            black,
        )))?;
        let tick_y = y_max / 40.0;
        chart.draw_series((0..=secs).step_by(10).map(|t| {
            let len = if t % 60 == 0 { tick_y * 2.0 } else { tick_y };
            PathElement::new(vec![(t as f64, 0.0), (t as f64, len)], BLACK)
        }))?;
        let tick_x = x_end / 150.0;
        chart.draw_series((1..=4).map(|q| {
            let y = y_max * f64::from(q) / 4.0;
            PathElement::new(vec![(0.0, y), (tick_x, y)], BLACK)
        }))?;
        // Light horizontal grid at the quarter marks.
        chart.draw_series((1..=4).map(|q| {
            let y = y_max * f64::from(q) / 4.0;
            PathElement::new(vec![(0.0, y), (x_end, y)], RGBColor(220, 220, 220))
        }))?;

        if is_top {
            for (series, color) in [(&ok, GREEN), (&fail, RED), (&info, RGBColor(255, 140, 0))] {
                chart.draw_series(LineSeries::new(
                    series
                        .iter()
                        .enumerate()
                        .map(|(i, n)| (i as f64 + 0.5, *n as f64)),
                    color.stroke_width(2),
                ))?;
            }
        } else {
            let med: Vec<(f64, f64)> = lat
                .iter()
                .map(|(b, v)| {
                    let mut v = v.clone();
                    v.sort_by(|a, b| a.total_cmp(b));
                    (*b as f64 + 0.5, v[v.len() / 2].min(lat_cap))
                })
                .collect();
            let max: Vec<(f64, f64)> = lat
                .iter()
                .map(|(b, v)| {
                    let m = v.iter().copied().fold(0.0, f64::max);
                    (*b as f64 + 0.5, m.min(lat_cap))
                })
                .collect();
            chart.draw_series(
                max.iter()
                    .map(|p| Circle::new(*p, 2, RGBColor(150, 60, 200).filled())),
            )?;
            chart.draw_series(LineSeries::new(med, BLUE.stroke_width(2)))?;
        }
    }
    root.present()?;
    Ok(PlotStats {
        seconds: secs,
        max_ops_per_sec: max_tp,
        latency_cap_ms: lat_cap,
        nemesis_windows: windows
            .into_iter()
            .map(|(n, s, e)| (n, s as f64 / 1e9, e as f64 / 1e9))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::History;
    use serde_json::json;

    #[test]
    fn renders_a_png() {
        let h = History::in_memory();
        let mut ops = Vec::new();
        // Synthetic: 120 s of ops, a partition from 30 to 60 s, a kill 80-95 s.
        let mut t = 0u64;
        let mut i = 0u64;
        let mut marks: Vec<&str> = Vec::new();
        let mut nem: Vec<(&str, u64)> = Vec::new();
        let mut push = |process: &str, kind: OpKind, f: &str, time: u64| {
            ops.push(Op {
                index: i,
                process: process.into(),
                kind,
                f: f.into(),
                value: json!({}),
                time_ns: time,
                node: None,
            });
            i += 1;
        };
        while t < 120_000_000_000 {
            let faulty = (30..60).contains(&(t / 1_000_000_000));
            push("c", OpKind::Invoke, "create", t);
            let lat = if faulty { 400_000_000 } else { 20_000_000 };
            let kind = if faulty && (t / 100_000_000) % 3 == 0 {
                OpKind::Info
            } else {
                OpKind::Ok
            };
            push("c", kind, "create", t + lat);
            t += lat + 30_000_000;
            for (at, f) in [
                (30, "start-partition"),
                (60, "stop-partition"),
                (80, "start-kill"),
                (95, "stop-kill"),
            ] {
                let at = at * 1_000_000_000u64;
                if t >= at && !marks.contains(&f) {
                    marks.push(f);
                    nem.push((f, t));
                }
            }
        }
        for (f, t) in nem {
            push("nemesis", OpKind::Info, f, t);
        }
        ops.sort_by_key(|o| o.time_ns);
        drop(h);
        let dir = std::env::var("JEPSEN_PLOT_DIR")
            .map(std::path::PathBuf::from)
            .ok();
        let tmp = tempfile::tempdir().unwrap();
        let path = dir
            .unwrap_or_else(|| tmp.path().to_path_buf())
            .join("plot-test.png");
        let stats = render(&ops, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(stats.nemesis_windows.len(), 2);
        assert!(stats.seconds >= 120);
    }
}
