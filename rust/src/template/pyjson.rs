//! JSON text exactly as Python's `json.dumps(value, ensure_ascii=False, indent=...,
//! separators=..., sort_keys=...)` writes it: `", "` and `": "` separators without indent,
//! `","` and `": "` with it, and floats as Python's `repr` writes them (`1e-07`, `1e+16`,
//! `100.0`).

use std::io;

use minijinja::value::Value;
use serde::Serialize;
use serde_json::ser::{Formatter, Serializer};

/// A finite float as Python's `repr(float)`: the shortest digits that round-trip, in
/// positional notation when the decimal exponent is in -4..16, else as `d.ddde+XX`.
pub fn py_float(value: f64) -> String {
    // Rust's `{:e}` also writes the shortest round-tripping digits: `-1.2345e-7`.
    let sci = format!("{value:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let n = digits.len() as i32;
    // value = 0.DIGITS * 10^decpt
    let decpt = exp + 1;
    if decpt > -4 && decpt <= 16 {
        if decpt <= 0 {
            format!("{sign}0.{}{digits}", "0".repeat((-decpt) as usize))
        } else if decpt >= n {
            format!("{sign}{digits}{}.0", "0".repeat((decpt - n) as usize))
        } else {
            let (int, frac) = digits.split_at(decpt as usize);
            format!("{sign}{int}.{frac}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let dot = if rest.is_empty() { "" } else { "." };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{dot}{rest}e{esign}{:02}", exp.abs())
    }
}

/// Python's `json` encoder layout: `item_sep` between items, `key_sep` after keys, and with
/// an indent, each item on its own line (after `item_sep`) indented by `level` copies of it.
struct PyFormatter<'a> {
    item_sep: &'a [u8],
    key_sep: &'a [u8],
    indent: Option<&'a [u8]>,
    level: usize,
    has_value: bool,
}

impl PyFormatter<'_> {
    fn newline<W: ?Sized + io::Write>(&self, w: &mut W) -> io::Result<()> {
        if let Some(indent) = self.indent {
            w.write_all(b"\n")?;
            for _ in 0..self.level {
                w.write_all(indent)?;
            }
        }
        Ok(())
    }

    fn open<W: ?Sized + io::Write>(&mut self, w: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.level += 1;
        self.has_value = false;
        w.write_all(bracket)
    }

    fn close<W: ?Sized + io::Write>(&mut self, w: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.level -= 1;
        if self.has_value {
            self.newline(w)?;
        }
        w.write_all(bracket)
    }

    fn item<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if !first {
            w.write_all(self.item_sep)?;
        }
        self.newline(w)
    }
}

impl Formatter for PyFormatter<'_> {
    fn write_f64<W: ?Sized + io::Write>(&mut self, w: &mut W, value: f64) -> io::Result<()> {
        w.write_all(py_float(value).as_bytes())
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, w: &mut W, value: f32) -> io::Result<()> {
        w.write_all(py_float(f64::from(value)).as_bytes())
    }

    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"[")
    }

    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"]")
    }

    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.item(w, first)
    }

    fn end_array_value<W: ?Sized + io::Write>(&mut self, _w: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"{")
    }

    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"}")
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.item(w, first)
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(self.key_sep)
    }

    fn end_object_value<W: ?Sized + io::Write>(&mut self, _w: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}

fn sort_keys(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sort_keys).collect())
        }
        other => other,
    }
}

fn sorted(value: &Value) -> Result<serde_json::Value, String> {
    serde_json::to_value(value)
        .map(sort_keys)
        .map_err(|e| e.to_string())
}

/// What `json.dumps` takes besides the value (`ensure_ascii` is always false).
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// `indent=`: the text for one level (`indent=4` is four spaces); `None` for one line.
    pub indent: Option<String>,
    /// `separators=(item, key)`; Python's default is `(", ", ": ")`, or `(",", ": ")` with
    /// an indent.
    pub separators: Option<(String, String)>,
    pub sort_keys: bool,
}

pub fn dumps(value: &Value, options: &Options) -> Result<String, String> {
    let (item_sep, key_sep) = match (&options.separators, &options.indent) {
        (Some((item, key)), _) => (item.as_str(), key.as_str()),
        (None, Some(_)) => (",", ": "),
        (None, None) => (", ", ": "),
    };
    let formatter = PyFormatter {
        item_sep: item_sep.as_bytes(),
        key_sep: key_sep.as_bytes(),
        indent: options.indent.as_deref().map(str::as_bytes),
        level: 0,
        has_value: false,
    };
    let mut out = Vec::new();
    let mut ser = Serializer::with_formatter(&mut out, formatter);
    let result = if options.sort_keys {
        sorted(value)?.serialize(&mut ser)
    } else {
        value.serialize(&mut ser)
    };
    result.map_err(|e| e.to_string())?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::py_float;

    #[test]
    fn floats_as_python_repr() {
        for (v, want) in [
            (0.1, "0.1"),
            (2.0, "2.0"),
            (-0.0, "-0.0"),
            (1e-7, "1e-07"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789012.0, "123456789012.0"),
            (1.5e300, "1.5e+300"),
            (-2.5e-300, "-2.5e-300"),
            (12345.678, "12345.678"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
        ] {
            assert_eq!(py_float(v), want, "{v:?}");
        }
    }
}
