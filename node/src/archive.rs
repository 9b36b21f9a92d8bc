//! Zip archives: checking uploaded processes, unpacking them into app dirs,
//! packing output dirs, and building a request's results archive.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use pesc_protocol::model::safe_relative_path;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

pub use crate::zip_check::check_zip;

/// Unpacks a (checked) zip into `dest`, keeping executable bits.
pub fn extract_zip(zip_path: &Path, dest: &Path) -> Result<()> {
    let f = File::open(zip_path).with_context(|| format!("opening {}", zip_path.display()))?;
    let mut z = ZipArchive::new(f).context("reading the process zip")?;
    for i in 0..z.len() {
        let mut e = z.by_index(i)?;
        let name = e.name()?.to_string();
        let rel = safe_relative_path(&name).map_err(|e| anyhow::anyhow!("{e}"))?;
        let out = dest.join(&rel);
        if e.is_dir() {
            std::fs::create_dir_all(&out)?;
            continue;
        }
        if e.is_symlink() {
            bail!("zip entry '{name}' is a link");
        }
        if let Some(p) = out.parent() {
            std::fs::create_dir_all(p)?;
        }
        let mut w = File::create(&out).with_context(|| format!("creating {}", out.display()))?;
        io::copy(&mut e, &mut w)?;
        if let Some(mode) = e.unix_mode() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&out, std::fs::Permissions::from_mode(mode & 0o755 | 0o600))?;
        }
    }
    Ok(())
}

/// Packs every regular file under `dir` into a zip written to `w`
/// (links and special files are skipped). Returns the number of files.
///
/// `dir` was filled by user code: nothing here follows a link. `dir` itself
/// must be a real directory, and each file is opened without following a
/// link and checked to be a regular file after opening, so a link planted
/// at `dir`, in it, or swapped in while packing cannot make the node pack
/// a file from outside.
pub fn pack_dir<W: Write + Seek>(dir: &Path, w: W) -> Result<usize> {
    let Some(root) = crate::confined::Beneath::open(dir)
        .with_context(|| format!("reading {}", dir.display()))?
    else {
        bail!("{} is not a directory (a link?)", dir.display());
    };
    let mut z = ZipWriter::new(w);
    // No timestamps (1980-01-01 for all) and names in order: the same
    // files make the same archive, byte for byte, so its hash says
    // whether two runs' outputs are the same (`pesc verify`).
    let opts = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .large_file(true)
        .last_modified_time(zip::DateTime::default());
    let mut n = 0;
    let mut entries: Vec<_> = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .follow_links(false)
        .follow_root_links(false)
        .into_iter()
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort_by(|a, b| a.path().cmp(b.path()));
    for e in entries {
        let rel = e
            .path()
            .strip_prefix(dir)?
            .to_string_lossy()
            .replace('\\', "/");
        if e.file_type().is_dir() {
            z.add_directory(rel, opts)?;
        } else if e.file_type().is_file() {
            let Some(mut f) = root.file(Path::new(&rel))? else {
                continue;
            };
            use std::os::unix::fs::PermissionsExt;
            let mode = f.metadata()?.permissions().mode() & 0o777;
            z.start_file(rel, opts.unix_permissions(mode))?;
            io::copy(&mut f, &mut z)?;
            n += 1;
        }
    }
    z.finish()?;
    Ok(n)
}

/// One rank's part of a results archive.
pub struct RankResult {
    pub rank: u32,
    /// The rank's output archive (a zip blob), if it produced one.
    pub output_zip: Option<std::path::PathBuf>,
    /// The rank's stdout (a blob), if any.
    pub stdout: Option<std::path::PathBuf>,
    /// Its sweep values and repetition (`results.csv`'s first columns).
    pub values: Vec<String>,
    pub repetition: u32,
}

/// Builds the results zip: `output_rank_N/…` for every rank, `output.txt`
/// (every rank's `output/output.txt` in rank order), `stdout.txt` (every
/// rank's stdout in rank order), `results.csv` and `merge-report.txt`
/// (`results_csv`: the ranks' CSV files with one header, merged, the sweep's
/// `params` first) and `extra` files (the receipt). Streams everything but
/// one CSV at a time.
pub fn build_results(
    ranks: &[RankResult],
    params: &[String],
    extra: &[(&str, Vec<u8>)],
    tmp_dir: &Path,
    out: &Path,
) -> Result<()> {
    let mut z = ZipWriter::new(BufWriter::new(File::create(out)?));
    let opts = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .large_file(true);
    let mut output_txt = tempfile_in(tmp_dir, "output-txt")?;
    let mut stdout_txt = tempfile_in(tmp_dir, "stdout-txt")?;
    let (csv_path, csv_file) = tempfile_in(tmp_dir, "results-csv")?;
    let mut merge = crate::results_csv::Merge::new(csv_file, params.to_vec());
    let mut without_csv = Vec::new();
    for r in ranks {
        let dir = format!("output_rank_{}/", r.rank);
        z.add_directory(&dir, opts)?;
        let mut had_csv = false;
        if let Some(p) = &r.output_zip {
            let mut src =
                ZipArchive::new(File::open(p)?).context("reading a rank's output archive")?;
            for i in 0..src.len() {
                let name = src.by_index_raw(i)?.name()?.to_string();
                if name.trim_end_matches('/') == "output.txt" {
                    let mut e = src.by_index(i)?;
                    append_with_newline(&mut e, &mut output_txt.1)?;
                }
                if crate::results_csv::Merge::<BufWriter<File>>::wants(&name) {
                    had_csv = true;
                    let mut e = src.by_index(i)?;
                    let size = e.size();
                    merge.add(r.rank, &r.values, r.repetition, &name, size, &mut e)?;
                }
                let e = src.by_index_raw(i)?;
                z.raw_copy_file_rename(e, format!("{dir}{name}"))?;
            }
        }
        if let Some(p) = &r.stdout {
            append_with_newline(&mut File::open(p)?, &mut stdout_txt.1)?;
        }
        if !had_csv {
            without_csv.push(r.rank);
        }
    }
    if merge.header_seen() {
        for rank in &without_csv {
            merge.no_csv(*rank);
        }
    }
    let (merged, mut report, mut csv) = merge.finish();
    csv.flush()?;
    drop(csv);
    for (name, (path, file)) in [("output.txt", output_txt), ("stdout.txt", stdout_txt)] {
        drop(file);
        z.start_file(name, opts)?;
        io::copy(&mut File::open(&path)?, &mut z)?;
        let _ = std::fs::remove_file(&path);
    }
    if merged {
        z.start_file("results.csv", opts)?;
        io::copy(&mut File::open(&csv_path)?, &mut z)?;
    }
    let _ = std::fs::remove_file(&csv_path);
    if !report.is_empty() {
        report.insert(
            0,
            "What results.csv leaves out (every rank's files are in output_rank_N/):".into(),
        );
        extra_owned(&mut z, opts, "merge-report.txt", report.join("\n") + "\n")?;
    }
    for (name, body) in extra {
        z.start_file(*name, opts)?;
        z.write_all(body)?;
    }
    z.finish()?.flush()?;
    Ok(())
}

/// A small file written whole into the archive.
fn extra_owned<W: Write + Seek>(
    z: &mut ZipWriter<W>,
    opts: SimpleFileOptions,
    name: &str,
    body: String,
) -> Result<()> {
    z.start_file(name, opts)?;
    z.write_all(body.as_bytes())?;
    Ok(())
}

fn tempfile_in(dir: &Path, what: &str) -> Result<(std::path::PathBuf, BufWriter<File>)> {
    let p = dir.join(format!("{what}-{}", hex::encode(rand::random::<[u8; 8]>())));
    let f = File::create(&p).with_context(|| format!("creating {}", p.display()))?;
    Ok((p, BufWriter::new(f)))
}

/// Copies `r` to `w`, adding a newline if the text did not end with one, so
/// the lines of consecutive ranks never run together.
fn append_with_newline(r: &mut impl Read, w: &mut impl Write) -> Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut last = b'\n';
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        last = buf[n - 1];
        w.write_all(&buf[..n])?;
    }
    if last != b'\n' {
        w.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zip in the temp dir, removed when dropped.
    struct TempZip(std::path::PathBuf);

    impl Drop for TempZip {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn zip_with(entries: &[(&str, &[u8])]) -> TempZip {
        let p = std::env::temp_dir().join(format!(
            "pesc-test-{}.zip",
            hex::encode(rand::random::<[u8; 8]>())
        ));
        let mut z = ZipWriter::new(File::create(&p).unwrap());
        for (name, data) in entries {
            z.start_file(*name, SimpleFileOptions::default()).unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
        TempZip(p)
    }

    #[test]
    fn rejects_bad_zips() {
        let slip = zip_with(&[("../evil.sh", b"x")]);
        assert!(check_zip(&slip.0, 1 << 30).unwrap_err().contains("escapes"));
        let abs = zip_with(&[("/etc/passwd", b"x")]);
        assert!(check_zip(&abs.0, 1 << 30).unwrap_err().contains("absolute"));
        let empty = zip_with(&[]);
        assert!(
            check_zip(&empty.0, 1 << 30)
                .unwrap_err()
                .contains("no files")
        );
        let big = zip_with(&[("a", &[0u8; 2048])]);
        assert!(
            check_zip(&big.0, 1024)
                .unwrap_err()
                .contains("unpacks to more")
        );
        let ok = zip_with(&[("src/main.py", b"print(1)")]);
        assert_eq!(
            check_zip(&ok.0, 1 << 30).unwrap().files,
            vec!["src/main.py"]
        );
        let junk = std::env::temp_dir().join("pesc-junk.zip");
        std::fs::write(&junk, b"not a zip at all").unwrap();
        assert!(
            check_zip(&junk, 1 << 30)
                .unwrap_err()
                .contains("cannot be read")
        );
        let _ = std::fs::remove_file(junk);
    }
}
