//! Checking an uploaded process zip before anything of it is unpacked: a
//! file of its own so that the fuzz target (`fuzz/`) can build it alone.

use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;

use pesc_protocol::model::safe_relative_path;
use zip::ZipArchive;

/// Most entries a process zip may hold.
pub const MAX_ZIP_ENTRIES: usize = 100_000;

/// What a process zip holds, once checked.
#[derive(Debug)]
pub struct ZipListing {
    /// Normalised paths of the files (not directories).
    pub files: Vec<String>,
}

/// Checks an uploaded zip: readable, not empty, every path relative and
/// inside the folder, no links, unpacked size within `max_unpacked`.
/// Errors are sentences for the user.
pub fn check_zip(path: &Path, max_unpacked: u64) -> Result<ZipListing, String> {
    let f = File::open(path).map_err(|e| format!("cannot read the upload: {e}"))?;
    check_zip_from(f, max_unpacked)
}

/// [`check_zip`] on any seekable reader (the fuzz target feeds bytes).
pub fn check_zip_from<R: Read + Seek>(r: R, max_unpacked: u64) -> Result<ZipListing, String> {
    let mut z = ZipArchive::new(r)
        .map_err(|e| format!("the uploaded zip cannot be read ({e}): send a valid .zip file"))?;
    if z.len() > MAX_ZIP_ENTRIES {
        return Err(format!(
            "the zip has {} entries; at most {MAX_ZIP_ENTRIES} are allowed",
            z.len()
        ));
    }
    let mut files = Vec::new();
    let mut total = 0u64;
    for i in 0..z.len() {
        let e = z
            .by_index_raw(i)
            .map_err(|e| format!("the uploaded zip is damaged ({e})"))?;
        let name = e
            .name()
            .map_err(|e| format!("the zip has an entry with an unreadable name ({e})"))?
            .to_string();
        let clean = safe_relative_path(&name).map_err(|e| {
            format!("the zip entry {e}; zip the folder's contents with relative paths")
        })?;
        if e.is_symlink() {
            return Err(format!(
                "the zip entry '{name}' is a symbolic link; links are not allowed"
            ));
        }
        if e.is_dir() {
            continue;
        }
        total = total.saturating_add(e.size());
        if total > max_unpacked {
            return Err(format!(
                "the zip unpacks to more than {} MiB",
                max_unpacked >> 20
            ));
        }
        files.push(clean);
    }
    if files.is_empty() {
        return Err("the zip holds no files: zip the folder with your program in it".into());
    }
    Ok(ZipListing { files })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    /// The fuzz target's short run (`fuzz/fuzz_targets/zip_check.rs` runs it
    /// long): a real process zip and random mutations of it never panic the
    /// check, and what it accepts lists only safe relative paths.
    #[test]
    fn the_zip_check_survives_mutated_zips() {
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut z = zip::ZipWriter::new(&mut buf);
            let o = zip::write::SimpleFileOptions::default();
            for (name, body) in [("main.py", "print(1)\n"), ("lib/util.py", "x = 2\n")] {
                z.start_file(name, o).unwrap();
                z.write_all(body.as_bytes()).unwrap();
            }
            z.add_directory("data/", o).unwrap();
            z.finish().unwrap();
        }
        let seed = buf.into_inner();
        fn target(data: &[u8]) {
            if let Ok(l) = super::check_zip_from(std::io::Cursor::new(data), 1 << 20) {
                for f in &l.files {
                    assert!(
                        !f.starts_with('/') && !f.split('/').any(|c| c == ".."),
                        "{f}"
                    );
                }
            }
        }
        pesc_protocol::fuzzing::short_run("zip_check", &[seed], 20_000, target);
    }
}
