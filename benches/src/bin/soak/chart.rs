//! `soak.png`: one panel each for requests/s with errors by fault, p99 latency, RSS and arena
//! slots in use, over the run's seconds, with the fault windows shaded behind them.

use std::collections::BTreeSet;
use std::path::Path;

use plotters::prelude::*;

use crate::output::{Run, window_rgb};
use crate::timeline::Window;

type Series = Vec<(String, RGBColor, Vec<(f64, f64)>)>;

fn palette(i: usize) -> RGBColor {
    const C: [(u8, u8, u8); 6] = [
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (23, 190, 207),
        (188, 189, 34),
    ];
    let (r, g, b) = C[i % C.len()];
    RGBColor(r, g, b)
}

/// Requests/s and errors per second by kind (the errors on a scale of their own would hide the
/// load; they share the axis, log-free, and the legend names them).
fn traffic(r: &Run) -> (Series, Series) {
    let blue = RGBColor(31, 119, 180);
    let ok: Vec<(f64, f64)> = r
        .seconds
        .iter()
        .enumerate()
        .map(|(i, s)| (i as f64, s.requests as f64))
        .collect();
    let kinds: BTreeSet<&str> = r.seconds.iter().flat_map(|s| s.errors.keys().copied()).collect();
    let errors = kinds
        .into_iter()
        .enumerate()
        .map(|(i, k)| {
            let pts = r
                .seconds
                .iter()
                .enumerate()
                .map(|(t, s)| (t as f64, *s.errors.get(k).unwrap_or(&0) as f64))
                .collect();
            (format!("errors: {k}"), palette(i), pts)
        })
        .collect();
    (vec![("responses/s".into(), blue, ok)], errors)
}

fn p99(r: &Run) -> Series {
    let pts = r
        .seconds
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut v = s.lat_us.clone();
            v.sort_unstable();
            let p = v
                .get(((v.len().max(1) - 1) as f64 * 0.99) as usize)
                .copied()
                .unwrap_or(0);
            (i as f64, p as f64 / 1000.0)
        })
        .collect();
    vec![("p99 ms".into(), RGBColor(31, 119, 180), pts)]
}

pub fn draw(r: &Run, path: &Path) -> Result<(), String> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| "cannot load the embedded font".to_string())?;
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let root = BitMapBackend::new(path, (1200, 1100)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let t_end = (r.seconds.len().max(1)) as f64;
    let (ok, errors) = traffic(r);
    let mut panels: Vec<(String, Series)> = vec![
        (
            "Responses/s and errors/s by fault".into(),
            ok.into_iter().chain(errors).collect(),
        ),
        ("p99 latency per second, ms".into(), p99(r)),
    ];
    let s = &r.samples;
    panels.push((
        "Proxy RSS, MiB".into(),
        vec![(
            "RSS".into(),
            RGBColor(44, 160, 44),
            s.iter().map(|x| (x.t_s, x.rss_kib as f64 / 1024.0)).collect(),
        )],
    ));
    panels.push((
        "Arena slots in use".into(),
        vec![
            (
                "request slots".into(),
                RGBColor(255, 127, 14),
                s.iter().map(|x| (x.t_s, x.slots_in_use)).collect(),
            ),
            (
                "out slots".into(),
                RGBColor(140, 86, 75),
                s.iter().map(|x| (x.t_s, x.out_slots_in_use)).collect(),
            ),
        ],
    ));
    let areas = root.split_evenly((panels.len(), 1));
    for (area, (caption, series)) in areas.iter().zip(&panels) {
        let ymax = series
            .iter()
            .flat_map(|(_, _, p)| p.iter().map(|x| x.1))
            .filter(|v| v.is_finite())
            .fold(1.0f64, f64::max)
            * 1.1;
        let mut ch = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(24)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..t_end, 0f64..ymax)
            .map_err(e)?;
        ch.configure_mesh()
            .x_desc("seconds")
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(e)?;
        for w in &r.timeline {
            let (rr, g, b) = window_rgb(w.kind);
            let end = w.end_s.unwrap_or(t_end).max(w.start_s + 0.3);
            ch.draw_series(std::iter::once(Rectangle::new(
                [(w.start_s, 0.0), (end, ymax)],
                RGBColor(rr, g, b).mix(0.25).filled(),
            )))
            .map_err(e)?;
        }
        for (name, color, pts) in series {
            let c = *color;
            ch.draw_series(LineSeries::new(pts.iter().copied().filter(|p| p.1.is_finite()), c))
                .map_err(e)?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c));
        }
        ch.configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 11))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(e)?;
    }
    legend_of_windows(&root)?;
    root.present().map_err(e)?;
    Ok(())
}

/// The fault colours, along the bottom edge.
fn legend_of_windows(root: &DrawingArea<BitMapBackend, plotters::coord::Shift>) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let all = [
        Window::UpstreamKill,
        Window::UpstreamSlow,
        Window::Reload,
        Window::BadReload,
        Window::ArenaBurst,
        Window::Quiet,
        Window::NatsDown,
        Window::WorkerKill,
        Window::GarbageWorker,
        Window::Starved,
    ];
    let (_, h) = root.dim_in_pixel();
    for (i, w) in all.iter().enumerate() {
        let x = 40 + i as i32 * 114;
        let y = h as i32 - 14;
        let (r, g, b) = window_rgb(*w);
        root.draw(&Rectangle::new(
            [(x, y - 6), (x + 14, y + 6)],
            RGBColor(r, g, b).mix(0.5).filled(),
        ))
        .map_err(e)?;
        root.draw(&Text::new(w.name(), (x + 18, y - 6), ("sans-serif", 12)))
            .map_err(e)?;
    }
    Ok(())
}
