//! Reading a backup chain: list, verify, restore a point, merge.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tandem_abi::layout::PAGE_SIZE;

use super::disk;
use super::point::{self, PointMeta, CHUNK_PAGES};
use super::{io, BackupError, PAGE};
use crate::snapshot::{self, files, SnapshotError, WriteStats};

/// Point numbers with a metadata file in `dir`, ascending.
pub fn point_numbers(dir: &Path) -> Result<Vec<u64>, BackupError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        if let Some(n) = entry.file_name().to_str().and_then(point::parse_meta_name) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// What `verify` found for one point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointReport {
    /// The point.
    pub point: u64,
    /// `None` when whole; otherwise what is wrong.
    pub problem: Option<String>,
}

/// A chain directory, its points' metadata read (or why not).
pub struct Chain {
    dir: PathBuf,
    points: BTreeMap<u64, Result<PointMeta, String>>,
}

impl Chain {
    /// Reads every point's metadata in `dir`.
    pub fn open(dir: &Path) -> Result<Self, BackupError> {
        let numbers = point_numbers(dir)?;
        if numbers.is_empty() {
            return Err(BackupError::Empty(dir.to_path_buf()));
        }
        let mut points = BTreeMap::new();
        for n in numbers {
            let path = dir.join(point::meta_name(n));
            let meta = std::fs::read(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|bytes| PointMeta::decode(&bytes).map_err(|e| e.to_string()))
                .and_then(|m| {
                    if m.point == n {
                        Ok(m)
                    } else {
                        Err(format!("metadata says it is point {}", m.point))
                    }
                });
            points.insert(n, meta);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            points,
        })
    }

    /// The points' metadata, by number (`Err` for an unreadable one).
    pub fn points(&self) -> &BTreeMap<u64, Result<PointMeta, String>> {
        &self.points
    }

    /// The last point's number.
    pub fn last(&self) -> u64 {
        self.points.keys().next_back().copied().unwrap_or(0)
    }

    /// Checks the whole chain: every point's metadata, every pages file
    /// against its chunk digests, and every link to the parent. Reads every
    /// pages file.
    pub fn verify(&self) -> Vec<PointReport> {
        self.verify_upto(self.last())
    }

    fn verify_upto(&self, upto: u64) -> Vec<PointReport> {
        let mut reports = Vec::new();
        let first = self.points.keys().next().copied().unwrap_or(0);
        // Chain digest of the previous point, if it was whole.
        let mut prev: Result<[u8; 32], u64> = Err(first);
        for n in first..=upto {
            let problem = match self.points.get(&n) {
                None => Some("its metadata file is missing".to_string()),
                Some(Err(e)) => Some(e.clone()),
                Some(Ok(meta)) => match (&prev, meta.base) {
                    (_, true) => self.check_pages(meta).err(),
                    (Ok(parent), false) if *parent == meta.parent => self.check_pages(meta).err(),
                    (Ok(_), false) => Some(format!(
                        "it does not follow point {} (chain digest differs)",
                        n.saturating_sub(1)
                    )),
                    (Err(bad), false) => Some(format!(
                        "it builds on point {bad}, which is damaged or missing"
                    )),
                },
            };
            prev = match (&problem, self.points.get(&n)) {
                (None, Some(Ok(meta))) => Ok(meta.chain),
                _ => Err(n),
            };
            reports.push(PointReport { point: n, problem });
        }
        reports
    }

    fn check_pages(&self, meta: &PointMeta) -> Result<(), String> {
        let path = self.dir.join(&meta.pages_file);
        let file = File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!("its pages file {} is missing", meta.pages_file)
            } else {
                format!("cannot read {}: {e}", path.display())
            }
        })?;
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        let expected = meta.pages.len() as u64 * PAGE_SIZE;
        if len != expected {
            return Err(format!(
                "its pages file {} is {len} bytes, expected {expected} (truncated or extended)",
                meta.pages_file
            ));
        }
        let mut buf = vec![0u8; CHUNK_PAGES * PAGE];
        for (i, pages) in meta.pages.chunks(CHUNK_PAGES).enumerate() {
            let bytes = &mut buf[..pages.len() * PAGE];
            let at = (i * CHUNK_PAGES) as u64 * PAGE_SIZE;
            file.read_exact_at(bytes, at)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let digest = point::chunk_digest(&meta.parent, meta.point, i as u64, pages, bytes);
            if meta.chunks.get(i) != Some(&digest) {
                return Err(format!(
                    "chunk {i} of {} (guest pages {:#x}..={:#x}) does not match its digest",
                    meta.pages_file,
                    pages.first().copied().unwrap_or(0),
                    pages.last().copied().unwrap_or(0)
                ));
            }
        }
        for i in 0..meta.disks.len() {
            disk::check_part(&self.dir, meta, i)?;
        }
        let chain = point::chain_digest(
            &meta.parent,
            meta.point,
            &meta.state,
            &meta.chunks,
            &meta.disks,
        )
        .map_err(|e| e.to_string())?;
        if chain != meta.chain {
            return Err("its chain digest does not match its content".into());
        }
        Ok(())
    }

    /// The whole points from the latest base at or before `point` up to it,
    /// after verifying them.
    fn lineage(&self, point: u64) -> Result<Vec<&PointMeta>, BackupError> {
        if !self.points.contains_key(&point) {
            return Err(BackupError::NoSuchPoint(point));
        }
        let reports = self.verify_upto(point);
        let damaged = |n: u64, fallback: String| {
            let why = reports
                .iter()
                .find(|r| r.point == n)
                .and_then(|r| r.problem.clone())
                .unwrap_or(fallback);
            BackupError::Damaged {
                point,
                damaged: n,
                why,
            }
        };
        // Walk back to the nearest base.
        let mut out = Vec::new();
        let mut n = point;
        loop {
            let meta = match self.points.get(&n) {
                Some(Ok(m)) => m,
                _ => return Err(damaged(n, "its metadata is missing or unreadable".into())),
            };
            out.push(meta);
            if meta.base {
                break;
            }
            n = n
                .checked_sub(1)
                .ok_or_else(|| damaged(0, "the chain has no base".into()))?;
        }
        // The earliest damaged point of the lineage is the one to name.
        if let Some(r) = reports
            .iter()
            .find(|r| r.point >= n && r.point <= point && r.problem.is_some())
        {
            return Err(damaged(r.point, String::new()));
        }
        out.reverse();
        disk::check_lineage(&out).map_err(|why| damaged(point, why))?;
        Ok(out)
    }

    /// For every guest page the lineage of `point` holds: which point's pages
    /// file has its latest content, and where in it.
    fn page_map<'a>(&'a self, lineage: &[&'a PointMeta]) -> BTreeMap<u64, (usize, u64)> {
        let mut map = BTreeMap::new();
        for (i, meta) in lineage.iter().enumerate() {
            for (slot, &page) in meta.pages.iter().enumerate() {
                map.insert(page, (i, slot as u64));
            }
        }
        map
    }

    /// Writes point `point` as a snapshot directory `out` (the chain is
    /// verified up to it first); `tandem restore out` then resumes it.
    pub fn restore(&self, point: u64, out: &Path) -> Result<WriteStats, BackupError> {
        let lineage = self.lineage(point)?;
        let map = self.page_map(&lineage);
        let files: Vec<(PathBuf, File)> = lineage
            .iter()
            .map(|m| {
                let p = self.dir.join(&m.pages_file);
                File::open(&p).map(|f| (p.clone(), f)).map_err(io(&p))
            })
            .collect::<Result<_, _>>()?;
        let last = lineage.last().ok_or(BackupError::NoSuchPoint(point))?;
        let mut state = last.state.clone();
        let size = state.machine.mem_size;
        // Each disk as it was at the point, durable before the state file
        // that names it.
        if !state.disks.is_empty() {
            std::fs::create_dir_all(out).map_err(io(out))?;
        }
        for (i, d) in state.disks.iter_mut().enumerate() {
            let name = format!("disk-{i}-{:016x}", files::nonce());
            disk::restore_disk(&self.dir, &lineage, i, &out.join(&name), out)?;
            d.file = name;
        }
        let stats = snapshot::write_with(out, &mut state, size, |dest, dest_path| {
            let mut digest = files::PageDigest::new();
            let mut stats = files::MemoryWriteStats::default();
            let mut buf = vec![0u8; PAGE];
            for (&page, &(i, slot)) in &map {
                let (path, f) = &files[i];
                f.read_exact_at(&mut buf, slot * PAGE_SIZE)
                    .map_err(|source| SnapshotError::Io {
                        path: path.clone(),
                        source,
                    })?;
                stats.pages_scanned += 1;
                files::write_nonzero(&buf, page, dest, dest_path, &mut digest, &mut stats)?;
            }
            Ok((digest, stats))
        })?;
        Ok(stats)
    }

    /// Folds the whole chain into one base point (numbered as the last
    /// point): earlier points are removed. Crash-safe: the new base replaces
    /// the last point's metadata atomically, and a base needs no parent, so
    /// the chain is valid at every step.
    pub fn merge(&self) -> Result<u64, BackupError> {
        let last = self.last();
        let lineage = self.lineage(last)?;
        let map = self.page_map(&lineage);
        let old = lineage.last().ok_or(BackupError::NoSuchPoint(last))?;
        let pages_name = format!("point-{last:06}-{:016x}.pages", files::nonce());
        let tmp = files::temp_path(&self.dir, &pages_name);
        let sources: Vec<(PathBuf, File)> = lineage
            .iter()
            .map(|m| {
                let p = self.dir.join(&m.pages_file);
                File::open(&p).map(|f| (p.clone(), f)).map_err(io(&p))
            })
            .collect::<Result<_, _>>()?;
        let mut new_parts: Vec<disk::DiskPart> = Vec::new();
        let result = (|| {
            let out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(io(&tmp))?;
            let parent = [0u8; 32];
            let mut kept = Vec::new();
            let mut chunks = Vec::new();
            let mut chunk_pages = Vec::new();
            let mut chunk_bytes = Vec::new();
            let mut buf = vec![0u8; PAGE];
            for (&page, &(i, slot)) in &map {
                let (path, f) = &sources[i];
                f.read_exact_at(&mut buf, slot * PAGE_SIZE)
                    .map_err(io(path))?;
                if files::is_zero(&buf) {
                    continue;
                }
                out.write_all_at(&buf, kept.len() as u64 * PAGE_SIZE)
                    .map_err(io(&tmp))?;
                kept.push(page);
                chunk_pages.push(page);
                chunk_bytes.extend_from_slice(&buf);
                if chunk_pages.len() == CHUNK_PAGES {
                    chunks.push(point::chunk_digest(
                        &parent,
                        last,
                        chunks.len() as u64,
                        &chunk_pages,
                        &chunk_bytes,
                    ));
                    chunk_pages.clear();
                    chunk_bytes.clear();
                }
            }
            if !chunk_pages.is_empty() {
                chunks.push(point::chunk_digest(
                    &parent,
                    last,
                    chunks.len() as u64,
                    &chunk_pages,
                    &chunk_bytes,
                ));
            }
            out.sync_all().map_err(io(&tmp))?;
            files::commit(&tmp, &self.dir.join(&pages_name), &self.dir)?;
            let mut parts = Vec::with_capacity(old.disks.len());
            for i in 0..old.disks.len() {
                match disk::fold_disk(&self.dir, &lineage, i, last) {
                    Ok(p) => parts.push(p),
                    Err(e) => {
                        disk::remove_parts(&self.dir, &parts);
                        return Err(e);
                    }
                }
            }
            let chain = point::chain_digest(&parent, last, &old.state, &chunks, &parts)?;
            new_parts = parts.clone();
            let meta = PointMeta {
                disks: parts,
                point: last,
                base: true,
                parent,
                pages_file: pages_name.clone(),
                pages: kept,
                chunks,
                state: old.state.clone(),
                chain,
            };
            files::write_atomic(&self.dir, &point::meta_name(last), &meta.encode()?)?;
            Ok::<(), BackupError>(())
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        // The new base is durable: the points before it, and the last
        // point's old pages file, can go.
        for (n, meta) in &self.points {
            if *n < last {
                let _ = std::fs::remove_file(self.dir.join(point::meta_name(*n)));
            }
            if let Ok(m) = meta {
                if *n < last || m.pages_file != pages_name {
                    let _ = std::fs::remove_file(self.dir.join(&m.pages_file));
                }
                for d in &m.disks {
                    if !new_parts.iter().any(|p| p.file == d.file) {
                        let _ = std::fs::remove_file(self.dir.join(&d.file));
                    }
                }
            }
        }
        let _ = files::sync_dir(&self.dir);
        Ok(last)
    }
}
