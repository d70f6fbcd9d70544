//! A grid of attention heat-maps, one panel per head, drawn as a PNG (pixels, with the crate
//! `font8x8`'s public-domain bitmap font for the labels, so no system font is needed) and as
//! an SVG (vector, text left to the viewer's fonts).

use std::fmt::Write as _;
use std::io::BufWriter;
use std::path::Path;

use font8x8::{BASIC_FONTS, LATIN_FONTS, UnicodeFonts};
use ndarray::Array2;

/// The attention of one layer: the characters on both axes and one `(T, T)` map per head,
/// rows the queries (the position attending) and columns the keys.
pub struct Heatmaps {
    /// The `T` characters of the prompt.
    pub labels: Vec<char>,
    /// One `(T, T)` map per head, each row summing to 1.
    pub heads: Vec<Array2<f32>>,
    /// The title above the grid.
    pub title: String,
}

/// A character as it is drawn on an axis: the font has no glyph for white space.
fn shown(c: char) -> char {
    match c {
        ' ' => '\u{b7}',  // middle dot
        '\n' => '\u{b6}', // pilcrow
        '\t' => '\u{bb}',
        c => c,
    }
}

/// Viridis-like colour for `v` in `[0, 1]`: dark blue through teal to yellow.
fn colour(v: f32) -> [u8; 3] {
    const STOPS: [[f32; 3]; 5] = [
        [68.0, 1.0, 84.0],
        [59.0, 82.0, 139.0],
        [33.0, 145.0, 140.0],
        [94.0, 201.0, 98.0],
        [253.0, 231.0, 37.0],
    ];
    let x = v.clamp(0.0, 1.0) * (STOPS.len() - 1) as f32;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f32;
    let mix = |k: usize| (STOPS[i][k] + (STOPS[i + 1][k] - STOPS[i][k]) * f).round() as u8;
    [mix(0), mix(1), mix(2)]
}

/// The layout shared by both renderings, in pixels.
struct Layout {
    cols: usize,
    /// The side of one cell.
    cell: usize,
    /// Every how many characters an axis is labelled.
    label_every: usize,
    /// The side of one panel's map.
    map: usize,
    /// A panel: its map plus the room for labels and its title.
    panel_w: usize,
    panel_h: usize,
    width: usize,
    height: usize,
    /// The largest probability drawn, the top of the colour scale.
    max: f32,
}

const MARGIN: usize = 12;
const LABEL: usize = 10; // a glyph's 8 pixels and a gap
const TITLE: usize = 28;
const SCALE_W: usize = 70;

impl Heatmaps {
    fn layout(&self) -> Layout {
        let t = self.labels.len().max(1);
        let n = self.heads.len().max(1);
        let cols = (n as f64).sqrt().ceil() as usize;
        let rows = n.div_ceil(cols);
        let cell = (360 / t).clamp(2, 24);
        let label_every = LABEL.div_ceil(cell).max(1);
        let map = cell * t;
        let panel_w = LABEL + map + MARGIN;
        let panel_h = LABEL + LABEL + map + MARGIN;
        let max = self
            .heads
            .iter()
            .flat_map(|h| h.iter().copied())
            .fold(0.0f32, f32::max)
            .max(f32::MIN_POSITIVE);
        Layout {
            cols,
            cell,
            label_every,
            map,
            panel_w,
            panel_h,
            width: (MARGIN + cols * panel_w + SCALE_W)
                .max(2 * MARGIN + 8 * self.title.chars().count()),
            height: TITLE + rows * panel_h + MARGIN,
            max,
        }
    }

    /// The top-left corner of head `h`'s map.
    fn origin(&self, l: &Layout, h: usize) -> (usize, usize) {
        let (r, c) = (h / l.cols, h % l.cols);
        (
            MARGIN + c * l.panel_w + LABEL,
            TITLE + r * l.panel_h + 2 * LABEL,
        )
    }

    /// Writes the grid as a PNG.
    pub fn write_png(&self, path: &Path) -> Result<(), String> {
        let l = self.layout();
        let mut img = Image::new(l.width, l.height);
        img.text(MARGIN, 8, &self.title, [0, 0, 0]);
        for (h, map) in self.heads.iter().enumerate() {
            let (x0, y0) = self.origin(&l, h);
            img.text(x0, y0 - 2 * LABEL, &format!("head {}", h + 1), [0, 0, 0]);
            for ((q, k), &p) in map.indexed_iter() {
                let fill = if k > q {
                    [235, 235, 235]
                } else {
                    colour(p / l.max)
                };
                img.rect(x0 + k * l.cell, y0 + q * l.cell, l.cell, l.cell, fill);
            }
            for (i, &c) in self.labels.iter().enumerate().step_by(l.label_every) {
                let mid = i * l.cell + l.cell / 2;
                img.glyph(
                    (x0 + mid).saturating_sub(4),
                    y0 - LABEL,
                    shown(c),
                    [60, 60, 60],
                );
                img.glyph(
                    x0 - LABEL,
                    (y0 + mid).saturating_sub(4),
                    shown(c),
                    [60, 60, 60],
                );
            }
        }
        // The colour scale: 0 at the bottom, the largest probability at the top.
        let (sx, sy, sh) = (l.width - SCALE_W + 8, TITLE + 2 * LABEL, l.map.max(100));
        for y in 0..sh {
            let v = 1.0 - y as f32 / (sh - 1).max(1) as f32;
            img.rect(sx, sy + y, 14, 1, colour(v));
        }
        img.text(sx + 18, sy, &format!("{:.2}", l.max), [0, 0, 0]);
        img.text(sx + 18, sy + sh - 8, "0", [0, 0, 0]);
        img.save(path)
    }

    /// Writes the grid as an SVG.
    pub fn write_svg(&self, path: &Path) -> Result<(), String> {
        let l = self.layout();
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="monospace">"#,
            w = l.width,
            h = l.height
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{MARGIN}" y="18" font-size="14">{}</text>"#,
            escape(&self.title)
        );
        for (h, map) in self.heads.iter().enumerate() {
            let (x0, y0) = self.origin(&l, h);
            let _ = writeln!(
                s,
                r#"<text x="{x0}" y="{}" font-size="12">head {}</text>"#,
                y0 - LABEL - 4,
                h + 1
            );
            for ((q, k), &p) in map.indexed_iter() {
                let [r, g, b] = if k > q {
                    [235, 235, 235]
                } else {
                    colour(p / l.max)
                };
                let _ = writeln!(
                    s,
                    r#"<rect x="{}" y="{}" width="{c}" height="{c}" fill="rgb({r},{g},{b})"><title>{:.4}</title></rect>"#,
                    x0 + k * l.cell,
                    y0 + q * l.cell,
                    p,
                    c = l.cell
                );
            }
            for (i, &c) in self.labels.iter().enumerate().step_by(l.label_every) {
                let mid = i * l.cell + l.cell / 2;
                let c = escape(&shown(c).to_string());
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{}" font-size="9" text-anchor="middle">{c}</text>"#,
                    x0 + mid,
                    y0 - 2
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{}" font-size="9" text-anchor="end">{c}</text>"#,
                    x0 - 2,
                    y0 + mid + 3
                );
            }
        }
        let (sx, sy, sh) = (l.width - SCALE_W + 8, TITLE + 2 * LABEL, l.map.max(100));
        let _ = writeln!(
            s,
            r#"<defs><linearGradient id="scale" x1="0" y1="1" x2="0" y2="0">{}</linearGradient></defs>"#,
            (0..=4)
                .map(|i| {
                    let [r, g, b] = colour(i as f32 / 4.0);
                    format!(
                        r#"<stop offset="{}" stop-color="rgb({r},{g},{b})"/>"#,
                        i as f32 / 4.0
                    )
                })
                .collect::<String>()
        );
        let _ = writeln!(
            s,
            r#"<rect x="{sx}" y="{sy}" width="14" height="{sh}" fill="url(#scale)"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="10">{:.2}</text>"#,
            sx + 18,
            sy + 8,
            l.max
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="10">0</text>"#,
            sx + 18,
            sy + sh
        );
        s.push_str("</svg>\n");
        std::fs::write(path, s).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An RGB raster on a white background.
struct Image {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

impl Image {
    fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            data: vec![255; width * height * 3],
        }
    }

    fn put(&mut self, x: usize, y: usize, rgb: [u8; 3]) {
        if x < self.width && y < self.height {
            let i = (y * self.width + x) * 3;
            self.data[i..i + 3].copy_from_slice(&rgb);
        }
    }

    fn rect(&mut self, x: usize, y: usize, w: usize, h: usize, rgb: [u8; 3]) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.put(xx, yy, rgb);
            }
        }
    }

    /// One 8×8 glyph with its top-left corner at `(x, y)`; unknown characters as `?`.
    fn glyph(&mut self, x: usize, y: usize, c: char, rgb: [u8; 3]) {
        let bits = BASIC_FONTS
            .get(c)
            .or_else(|| LATIN_FONTS.get(c))
            .or_else(|| BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        for (row, byte) in bits.iter().enumerate() {
            for col in 0..8 {
                if byte >> col & 1 == 1 {
                    self.put(x + col, y + row, rgb);
                }
            }
        }
    }

    fn text(&mut self, x: usize, y: usize, text: &str, rgb: [u8; 3]) {
        for (i, c) in text.chars().enumerate() {
            self.glyph(x + 8 * i, y, c, rgb);
        }
    }

    fn save(&self, path: &Path) -> Result<(), String> {
        let fail = |e: &dyn std::fmt::Display| format!("cannot write {}: {e}", path.display());
        let file = std::fs::File::create(path).map_err(|e| fail(&e))?;
        let (w, h) = (self.width as u32, self.height as u32);
        let mut encoder = png::Encoder::new(BufWriter::new(file), w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(|e| fail(&e))?;
        writer.write_image_data(&self.data).map_err(|e| fail(&e))
    }
}
