//! `results.csv`: every rank's `output/*.csv` that has the same header,
//! merged into one tidy table — the sweep's parameters, `rank`,
//! `repetition`, then the program's columns — and `merge-report.txt`
//! listing what did not fit (another header, a row of another width, a
//! file too large), so nothing is left out silently.

use std::io::{Read, Write};

use anyhow::Result;
use pesc_protocol::sweep::{csv_field, split_csv};

/// CSV files larger than this are reported, not merged.
pub const MAX_MERGED_CSV: u64 = 256 << 20;

/// Rows of one file left out that the report names one by one (a run
/// decides how many there are); the rest are counted.
const ROWS_NAMED: usize = 20;

/// The merge as it goes.
pub struct Merge<W: Write> {
    out: W,
    /// The sweep's parameter names (the first columns).
    params: Vec<String>,
    /// The program's header, from the first CSV seen (rank order).
    header: Option<(Vec<String>, String)>,
    rows: u64,
    pub report: Vec<String>,
}

impl<W: Write> Merge<W> {
    pub fn new(out: W, params: Vec<String>) -> Merge<W> {
        Merge {
            out,
            params,
            header: None,
            rows: 0,
            report: Vec::new(),
        }
    }

    /// Whether a zip entry of a rank's output is merged: a `.csv` at the
    /// top of `output/`.
    pub fn wants(name: &str) -> bool {
        !name.contains('/') && name.to_ascii_lowercase().ends_with(".csv")
    }

    /// Adds one CSV of `rank` (its sweep `values` and `repetition`).
    pub fn add(
        &mut self,
        rank: u32,
        values: &[String],
        repetition: u32,
        name: &str,
        size: u64,
        r: &mut impl Read,
    ) -> Result<()> {
        if size > MAX_MERGED_CSV {
            self.report.push(format!(
                "rank {rank}: output/{name} is {size} bytes, over {MAX_MERGED_CSV}: not merged"
            ));
            return Ok(());
        }
        let mut text = String::new();
        if r.read_to_string(&mut text).is_err() {
            self.report.push(format!(
                "rank {rank}: output/{name} is not UTF-8 text: not merged"
            ));
            return Ok(());
        }
        let mut records = split_csv(&text).into_iter();
        let Some(head) = records.next() else {
            self.report
                .push(format!("rank {rank}: output/{name} is empty: not merged"));
            return Ok(());
        };
        match &self.header {
            None => {
                let mut cols: Vec<String> = self.params.clone();
                cols.extend(["rank".to_string(), "repetition".to_string()]);
                cols.extend(head.iter().cloned());
                self.write_record(&cols)?;
                self.header = Some((head.clone(), format!("rank {rank}'s output/{name}")));
            }
            Some((h, from)) if *h != head => {
                self.report.push(format!(
                    "rank {rank}: output/{name} has the header \"{}\", not \"{}\" of {from}: not merged",
                    head.join(","),
                    h.join(",")
                ));
                return Ok(());
            }
            Some(_) => {}
        }
        let width = head.len();
        let mut left_out = 0;
        for (i, rec) in records.enumerate() {
            if rec.len() == 1 && rec[0].is_empty() {
                continue;
            }
            if rec.len() != width {
                left_out += 1;
                if left_out <= ROWS_NAMED {
                    self.report.push(format!(
                        "rank {rank}: output/{name} line {}: {} fields, the header has {width}: row left out",
                        i + 2,
                        rec.len()
                    ));
                }
                continue;
            }
            let mut row: Vec<String> = values.to_vec();
            row.extend([rank.to_string(), repetition.to_string()]);
            row.extend(rec);
            self.write_record(&row)?;
            self.rows += 1;
        }
        if left_out > ROWS_NAMED {
            self.report.push(format!(
                "rank {rank}: output/{name}: {} more rows of another width left out",
                left_out - ROWS_NAMED
            ));
        }
        Ok(())
    }

    fn write_record(&mut self, fields: &[String]) -> Result<()> {
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        self.out.write_all(line.join(",").as_bytes())?;
        self.out.write_all(b"\n")?;
        Ok(())
    }

    /// Whether a CSV was merged yet.
    pub fn header_seen(&self) -> bool {
        self.header.is_some()
    }

    /// A rank that left no CSV while others did is reported too.
    pub fn no_csv(&mut self, rank: u32) {
        self.report.push(format!("rank {rank}: no CSV in output/"));
    }

    /// Whether anything was merged; the writer, to close.
    pub fn finish(self) -> (bool, Vec<String>, W) {
        (self.header.is_some(), self.report, self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_headers_merge_and_the_rest_is_reported() {
        let mut m = Merge::new(Vec::new(), vec!["alpha".into()]);
        let a = "x,y\n1,2\n3,4\n";
        m.add(
            0,
            &["0.1".into()],
            0,
            "r.csv",
            a.len() as u64,
            &mut a.as_bytes(),
        )
        .unwrap();
        let b = "x,y\n5,\"6,5\"\n7\n";
        m.add(
            1,
            &["0.5".into()],
            1,
            "r.csv",
            b.len() as u64,
            &mut b.as_bytes(),
        )
        .unwrap();
        let c = "x,z\n9,9\n";
        m.add(
            2,
            &["0.9".into()],
            0,
            "r.csv",
            c.len() as u64,
            &mut c.as_bytes(),
        )
        .unwrap();
        m.no_csv(3);
        let (any, report, out) = m.finish();
        assert!(any);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "alpha,rank,repetition,x,y\n0.1,0,0,1,2\n0.1,0,0,3,4\n0.5,1,1,5,\"6,5\"\n"
        );
        assert_eq!(report.len(), 3, "{report:?}");
        assert!(report[0].contains("line 3: 1 fields"), "{report:?}");
        assert!(
            report[1].contains("rank 2") && report[1].contains("x,z"),
            "{report:?}"
        );
        assert!(Merge::<Vec<u8>>::wants("results.csv"));
        assert!(!Merge::<Vec<u8>>::wants("sub/results.csv"));
    }
}
