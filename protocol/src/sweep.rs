//! Parameter sweeps: one request whose ranks cover every combination of
//! some parameters' values, each combination repeated. Rank `r` runs
//! combination `r / repetitions`, repetition `r % repetitions`; its values
//! come after the request's own parameters in `--parameters` (in the
//! sweep's order) and in the environment as `PESC_PARAM_NAME`.
//!
//! The combinations are given whole (`rows`): a grid of values (`grid`,
//! the first parameter varying slowest), or the rows of a CSV file
//! (`from_csv`). Every run also gets `PESC_SEED`, derived from the
//! request's seed and its rank, so a rerun draws the same numbers.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::limits::MAX_PARAMETER_BYTES;

/// Parameters in one sweep, at most.
pub const MAX_SWEEP_PARAMS: usize = 16;

/// A parameter's name: a letter or `_`, then letters, digits or `_`
/// (it becomes an environment variable), at most this long.
pub const MAX_PARAM_NAME: usize = 32;

/// Values one range (`a..b:step`) may expand to, at most.
pub const MAX_RANGE_VALUES: usize = 100_000;

/// A sweep: parameter names and the combinations of their values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Sweep {
    pub names: Vec<String>,
    /// One row of values per combination, in the order ranks take them.
    pub rows: Vec<Vec<String>>,
}

/// What one rank of a sweep runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point<'a> {
    /// Which combination (the row), and which repetition of it.
    pub combination: usize,
    pub repetition: u32,
    pub values: &'a [String],
}

impl Sweep {
    /// How many combinations a grid of these values makes, checked (names,
    /// values, at most `MAX_REPETITIONS`) without making them.
    pub fn grid_size(params: &[(String, Vec<String>)]) -> Result<u64> {
        if params.is_empty() || params.len() > MAX_SWEEP_PARAMS {
            return Err(Error::invalid(format!(
                "a sweep has 1 to {MAX_SWEEP_PARAMS} parameters"
            )));
        }
        let mut n: u64 = 1;
        for (i, (name, values)) in params.iter().enumerate() {
            check_name(name)?;
            if params[..i].iter().any(|(m, _)| m == name) {
                return Err(Error::invalid(format!("the sweep names {name} twice")));
            }
            if values.is_empty() {
                return Err(Error::invalid("a swept parameter needs at least one value"));
            }
            n = n.saturating_mul(values.len() as u64);
            if n > u64::from(crate::limits::MAX_REPETITIONS) {
                return Err(Error::invalid(format!(
                    "the sweep has more than {} combinations",
                    crate::limits::MAX_REPETITIONS
                )));
            }
        }
        Ok(n)
    }

    /// Every combination of the values given per parameter, the first
    /// parameter varying slowest.
    pub fn grid(params: &[(String, Vec<String>)]) -> Result<Sweep> {
        Self::grid_size(params)?;
        let mut rows: Vec<Vec<String>> = vec![Vec::new()];
        for (_, values) in params {
            rows = rows
                .iter()
                .flat_map(|r| {
                    values.iter().map(move |v| {
                        let mut r = r.clone();
                        r.push(v.clone());
                        r
                    })
                })
                .collect();
        }
        let s = Sweep {
            names: params.iter().map(|(n, _)| n.clone()).collect(),
            rows,
        };
        s.check()?;
        Ok(s)
    }

    /// A sweep from `name=VALUES` (`0.1,0.5,0.9` or a range
    /// `100..1000:100`, both ends included).
    pub fn parse_param(arg: &str) -> Result<(String, Vec<String>)> {
        let (name, values) = arg.split_once('=').ok_or_else(|| {
            Error::invalid(format!(
                "a sweep is NAME=V1,V2,… or NAME=FROM..TO:STEP, not '{arg}'"
            ))
        })?;
        let name = name.trim().to_string();
        check_name(&name)?;
        let values = values.trim();
        let list = match parse_range(values)? {
            Some(r) => r,
            None => values
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect(),
        };
        if list.is_empty() {
            return Err(Error::invalid(format!("the sweep of {name} has no value")));
        }
        Ok((name, list))
    }

    /// A sweep from a CSV file: a header of parameter names, then one row
    /// of values per combination.
    pub fn from_csv(text: &str) -> Result<Sweep> {
        let mut records = split_csv(text)
            .into_iter()
            .filter(|r| !r.iter().all(String::is_empty));
        let names: Vec<String> = records
            .next()
            .ok_or_else(|| Error::invalid("the sweep file is empty"))?
            .into_iter()
            .map(|n| n.trim().to_string())
            .collect();
        let rows: Vec<Vec<String>> = records.collect();
        let s = Sweep { names, rows };
        s.check()?;
        Ok(s)
    }

    /// Checks names, rows and values.
    pub fn check(&self) -> Result<()> {
        if self.names.is_empty() || self.names.len() > MAX_SWEEP_PARAMS {
            return Err(Error::invalid(format!(
                "a sweep has 1 to {MAX_SWEEP_PARAMS} parameters"
            )));
        }
        for (i, n) in self.names.iter().enumerate() {
            check_name(n)?;
            if self.names[..i].contains(n) {
                return Err(Error::invalid(format!("the sweep names {n} twice")));
            }
        }
        if self.rows.is_empty() {
            return Err(Error::invalid("the sweep has no combination"));
        }
        if self.rows.len() > crate::limits::MAX_REPETITIONS as usize {
            return Err(Error::invalid("the sweep has too many combinations"));
        }
        for (i, r) in self.rows.iter().enumerate() {
            if r.len() != self.names.len() {
                return Err(Error::invalid(format!(
                    "combination {} has {} values for {} parameters",
                    i + 1,
                    r.len(),
                    self.names.len()
                )));
            }
            if r.iter()
                .any(|v| v.len() > MAX_PARAMETER_BYTES || v.contains('\0'))
            {
                return Err(Error::invalid(format!(
                    "combination {} has a value over {MAX_PARAMETER_BYTES} bytes (or a NUL)",
                    i + 1
                )));
            }
        }
        Ok(())
    }

    /// Ranks of a request running each combination `repetitions` times.
    pub fn ranks(&self, repetitions: u32) -> u64 {
        self.rows.len() as u64 * u64::from(repetitions.max(1))
    }

    /// What rank `rank` runs, when each combination runs `repetitions`
    /// times.
    pub fn point(&self, rank: u32, repetitions: u32) -> Option<Point<'_>> {
        let reps = repetitions.max(1);
        let combination = (rank / reps) as usize;
        Some(Point {
            combination,
            repetition: rank % reps,
            values: self.rows.get(combination)?,
        })
    }

    /// The environment variable a parameter is given in.
    pub fn env_name(name: &str) -> String {
        format!("PESC_PARAM_{}", name.to_ascii_uppercase())
    }
}

/// A parameter name: a letter or `_`, then letters, digits or `_`.
pub fn check_name(n: &str) -> Result<()> {
    let ok = !n.is_empty()
        && n.len() <= MAX_PARAM_NAME
        && n.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "a swept parameter's name is a letter or _ then letters, digits or _ (at most {MAX_PARAM_NAME}), not '{n}'"
        )))
    }
}

/// `FROM..TO:STEP` (both ends included; whole numbers stay whole), or
/// `None` when `s` is not a range.
fn parse_range(s: &str) -> Result<Option<Vec<String>>> {
    let Some((from, rest)) = s.split_once("..") else {
        return Ok(None);
    };
    let (to, step) = rest.split_once(':').unwrap_or((rest, "1"));
    let bad = || Error::invalid(format!("a range is FROM..TO:STEP with numbers, not '{s}'"));
    let whole = [from, to, step]
        .iter()
        .all(|x| x.trim().parse::<i64>().is_ok());
    let (a, b, st): (f64, f64, f64) = (
        from.trim().parse().map_err(|_| bad())?,
        to.trim().parse().map_err(|_| bad())?,
        step.trim().parse().map_err(|_| bad())?,
    );
    if !(a.is_finite() && b.is_finite() && st.is_finite()) || st <= 0.0 || b < a {
        return Err(Error::invalid(format!(
            "a range goes up from FROM to TO by a positive STEP, not '{s}'"
        )));
    }
    let n = ((b - a) / st + 1e-9).floor() as u64 + 1;
    if n as usize > MAX_RANGE_VALUES {
        return Err(Error::invalid(format!(
            "the range '{s}' has more than {MAX_RANGE_VALUES} values"
        )));
    }
    Ok(Some(
        (0..n)
            .map(|i| {
                let v = a + st * i as f64;
                if whole {
                    format!("{}", v.round() as i64)
                } else {
                    // The shortest form that reads back the same, without
                    // float noise (0.1 + 0.2).
                    let r = (v * 1e9).round() / 1e9;
                    format!("{r}")
                }
            })
            .collect(),
    ))
}

/// The records of a CSV text (RFC 4180: quoted fields may hold commas,
/// quotes doubled, and line breaks).
pub fn split_csv(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rec = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => rec.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                rec.push(std::mem::take(&mut field));
                out.push(std::mem::take(&mut rec));
            }
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !rec.is_empty() {
        rec.push(field);
        out.push(rec);
    }
    out
}

/// One CSV field, quoted when it must be.
pub fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

/// The seed a rank is given (`PESC_SEED`): from the request's seed and the
/// rank, below 2^31 (R's `set.seed` takes a 32-bit integer).
pub fn rank_seed(seed: u64, rank: u32) -> u32 {
    let mut h = blake3::Hasher::new();
    h.update(b"pesc rank seed v1");
    h.update(&seed.to_le_bytes());
    h.update(&rank.to_le_bytes());
    let b = h.finalize();
    u32::from_le_bytes([
        b.as_bytes()[0],
        b.as_bytes()[1],
        b.as_bytes()[2],
        b.as_bytes()[3],
    ]) & 0x7fff_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grid_covers_every_combination_first_parameter_slowest() {
        let a = Sweep::parse_param("alpha=0.1, 0.5,0.9").unwrap();
        let n = Sweep::parse_param("n=100..300:100").unwrap();
        assert_eq!(n.1, ["100", "200", "300"]);
        let s = Sweep::grid(&[a, n]).unwrap();
        assert_eq!(s.names, ["alpha", "n"]);
        assert_eq!(s.rows.len(), 9);
        assert_eq!(s.rows[0], ["0.1", "100"]);
        assert_eq!(s.rows[1], ["0.1", "200"]);
        assert_eq!(s.rows[8], ["0.9", "300"]);
        assert_eq!(s.ranks(25), 225);
        let p = s.point(26, 25).unwrap();
        assert_eq!((p.combination, p.repetition), (1, 1));
        assert_eq!(p.values, ["0.1", "200"]);
        assert!(s.point(225, 25).is_none());
        assert_eq!(Sweep::env_name("alpha"), "PESC_PARAM_ALPHA");
    }

    #[test]
    fn ranges_and_bad_sweeps() {
        let (_, v) = Sweep::parse_param("p=0..0.3:0.1").unwrap();
        assert_eq!(v, ["0", "0.1", "0.2", "0.3"]);
        for bad in [
            "alpha",
            "1x=1,2",
            "a=",
            "a=5..1",
            "a=1..5:0",
            "a=1..1e12:1",
            "a-b=1",
        ] {
            assert!(Sweep::parse_param(bad).is_err(), "{bad}");
        }
        let dup = Sweep::grid(&[
            ("a".into(), vec!["1".into()]),
            ("a".into(), vec!["2".into()]),
        ]);
        assert!(dup.is_err());
    }

    #[test]
    fn a_csv_gives_rows_quoted_fields_included() {
        let s = Sweep::from_csv("alpha,label\n0.1,\"a, b\"\n0.5,\"say \"\"hi\"\"\"\n\n").unwrap();
        assert_eq!(s.rows, [["0.1", "a, b"], ["0.5", "say \"hi\""]]);
        assert!(Sweep::from_csv("alpha,n\n1\n").is_err(), "a short row");
        assert!(Sweep::from_csv("").is_err());
        assert_eq!(csv_field("a, b"), "\"a, b\"");
        assert_eq!(csv_field("x"), "x");
    }

    #[test]
    fn seeds_differ_by_rank_and_repeat_for_the_same_seed() {
        assert_eq!(rank_seed(7, 3), rank_seed(7, 3));
        assert_ne!(rank_seed(7, 3), rank_seed(7, 4));
        assert_ne!(rank_seed(7, 3), rank_seed(8, 3));
        assert!(rank_seed(u64::MAX, u32::MAX) < 1 << 31);
    }
}
