//! The daemon's desired state in an embedded database (`redb`, one file
//! `state.redb` in the state directory): each VM's record and each worker
//! process. Every change is one committed transaction, written before the
//! daemon acts on it, so a daemon killed at any point finds on restart what
//! it meant to do.

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tandem::api::{Desired, ExitInfo, VmSpec, VmState};

const VMS: TableDefinition<&str, &[u8]> = TableDefinition::new("vms");
const WORKERS: TableDefinition<u32, &[u8]> = TableDefinition::new("workers");
const FLEETS: TableDefinition<u64, &[u8]> = TableDefinition::new("fleets");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The next VM number (part of each VM id).
const NEXT_VM: &str = "next-vm";

/// Why the database failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed.
    #[error("state database: {0}")]
    Db(String),
    /// A record that does not decode (written by another version?).
    #[error("state database record '{key}': {source}")]
    Record {
        /// Its key.
        key: String,
        /// Why.
        source: serde_json::Error,
    },
}

fn dberr<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

/// One VM, as kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    /// What it was created with (a restore changes where it starts from).
    pub spec: VmSpec,
    /// Its number (the high half of its VM ids).
    pub number: u64,
    /// What the daemon keeps it at.
    pub desired: Desired,
    /// Where it was last seen.
    pub state: VmState,
    /// Runs started.
    pub generation: u64,
    /// Runs started by the restart policy.
    pub restarts: u32,
    /// The worker of the current run.
    pub worker: Option<u32>,
    /// How the last run ended.
    pub last_exit: Option<ExitInfo>,
}

/// One worker process, as kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// Its number.
    pub id: u32,
    /// Its process id.
    pub pid: u32,
}

/// One fleet, as kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetRecord {
    /// Its number.
    pub id: u64,
    /// The fleet file.
    pub file: String,
    /// Its runner's process.
    pub pid: u32,
}

/// The database.
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or makes) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(dberr)?;
        let w = db.begin_write().map_err(dberr)?;
        {
            w.open_table(VMS).map_err(dberr)?;
            w.open_table(WORKERS).map_err(dberr)?;
            w.open_table(FLEETS).map_err(dberr)?;
            w.open_table(META).map_err(dberr)?;
        }
        w.commit().map_err(dberr)?;
        Ok(Self { db })
    }

    /// Every VM record.
    pub fn vms(&self) -> Result<Vec<VmRecord>, StoreError> {
        let r = self.db.begin_read().map_err(dberr)?;
        let t = r.open_table(VMS).map_err(dberr)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(dberr)? {
            let (k, v) = entry.map_err(dberr)?;
            out.push(
                serde_json::from_slice(v.value()).map_err(|source| StoreError::Record {
                    key: k.value().to_string(),
                    source,
                })?,
            );
        }
        Ok(out)
    }

    /// Writes (or replaces) a VM record.
    pub fn put_vm(&self, vm: &VmRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(vm).map_err(dberr)?;
        let w = self.db.begin_write().map_err(dberr)?;
        w.open_table(VMS)
            .map_err(dberr)?
            .insert(vm.spec.name.as_str(), bytes.as_slice())
            .map_err(dberr)?;
        w.commit().map_err(dberr)
    }

    /// Writes (or replaces) several VM records in one transaction (one
    /// commit, one fsync, however many).
    pub fn put_vms<'a>(
        &self,
        vms: impl IntoIterator<Item = &'a VmRecord>,
    ) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(dberr)?;
        {
            let mut t = w.open_table(VMS).map_err(dberr)?;
            for vm in vms {
                let bytes = serde_json::to_vec(vm).map_err(dberr)?;
                t.insert(vm.spec.name.as_str(), bytes.as_slice())
                    .map_err(dberr)?;
            }
        }
        w.commit().map_err(dberr)
    }

    /// Writes a new VM record with the next VM number (which it sets in
    /// `vm`), in one transaction.
    pub fn add_vm(&self, vm: &mut VmRecord) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(dberr)?;
        {
            let mut meta = w.open_table(META).map_err(dberr)?;
            let n = meta
                .get(NEXT_VM)
                .map_err(dberr)?
                .map(|v| v.value())
                .unwrap_or(1);
            meta.insert(NEXT_VM, n + 1).map_err(dberr)?;
            vm.number = n;
            let bytes = serde_json::to_vec(&*vm).map_err(dberr)?;
            w.open_table(VMS)
                .map_err(dberr)?
                .insert(vm.spec.name.as_str(), bytes.as_slice())
                .map_err(dberr)?;
        }
        w.commit().map_err(dberr)
    }

    /// Removes a VM record.
    pub fn delete_vm(&self, name: &str) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(dberr)?;
        w.open_table(VMS)
            .map_err(dberr)?
            .remove(name)
            .map_err(dberr)?;
        w.commit().map_err(dberr)
    }

    /// Every worker record.
    pub fn workers(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        let r = self.db.begin_read().map_err(dberr)?;
        let t = r.open_table(WORKERS).map_err(dberr)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(dberr)? {
            let (k, v) = entry.map_err(dberr)?;
            out.push(
                serde_json::from_slice(v.value()).map_err(|source| StoreError::Record {
                    key: format!("worker {}", k.value()),
                    source,
                })?,
            );
        }
        Ok(out)
    }

    /// Writes a worker record.
    pub fn put_worker(&self, w: &WorkerRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(w).map_err(dberr)?;
        let tx = self.db.begin_write().map_err(dberr)?;
        tx.open_table(WORKERS)
            .map_err(dberr)?
            .insert(w.id, bytes.as_slice())
            .map_err(dberr)?;
        tx.commit().map_err(dberr)
    }

    /// Removes a worker record.
    pub fn delete_worker(&self, id: u32) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(dberr)?;
        w.open_table(WORKERS)
            .map_err(dberr)?
            .remove(id)
            .map_err(dberr)?;
        w.commit().map_err(dberr)
    }

    /// Every fleet record.
    pub fn fleets(&self) -> Result<Vec<FleetRecord>, StoreError> {
        let r = self.db.begin_read().map_err(dberr)?;
        let t = r.open_table(FLEETS).map_err(dberr)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(dberr)? {
            let (k, v) = entry.map_err(dberr)?;
            out.push(
                serde_json::from_slice(v.value()).map_err(|source| StoreError::Record {
                    key: format!("fleet {}", k.value()),
                    source,
                })?,
            );
        }
        Ok(out)
    }

    /// Writes a fleet record.
    pub fn put_fleet(&self, f: &FleetRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(f).map_err(dberr)?;
        let w = self.db.begin_write().map_err(dberr)?;
        w.open_table(FLEETS)
            .map_err(dberr)?
            .insert(f.id, bytes.as_slice())
            .map_err(dberr)?;
        w.commit().map_err(dberr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem::api::RestartPolicy;

    fn record(name: &str) -> VmRecord {
        VmRecord {
            spec: VmSpec {
                name: name.into(),
                image: Some("/i".into()),
                memory: 64 << 20,
                cmdline: String::new(),
                restart: RestartPolicy::Always,
                net: None,
                disks: Vec::new(),
                snapshot: None,
                checkpoint: None,
            },
            number: 1,
            desired: Desired::Running,
            state: VmState::Running,
            generation: 3,
            restarts: 1,
            worker: Some(2),
            last_exit: None,
        }
    }

    #[test]
    fn records_survive_a_reopen() {
        let dir = std::env::temp_dir().join(format!("tandemd-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.redb");
        let _ = std::fs::remove_file(&path);
        {
            let s = Store::open(&path).unwrap();
            s.put_vm(&record("a")).unwrap();
            s.put_vm(&record("b")).unwrap();
            s.delete_vm("a").unwrap();
            s.put_worker(&WorkerRecord { id: 2, pid: 99 }).unwrap();
            let mut c = record("c");
            s.add_vm(&mut c).unwrap();
            assert_eq!(c.number, 1);
            let (mut d, mut e) = (record("d"), record("e"));
            d.state = VmState::Ready;
            e.generation = 9;
            s.put_vms([&d, &e]).unwrap();
        }
        let s = Store::open(&path).unwrap();
        let mut c = record("c");
        c.number = 1;
        let mut d = record("d");
        d.state = VmState::Ready;
        let mut e = record("e");
        e.generation = 9;
        assert_eq!(s.vms().unwrap(), vec![record("b"), c, d, e]);
        assert_eq!(s.workers().unwrap(), vec![WorkerRecord { id: 2, pid: 99 }]);
        let mut f = record("f");
        s.add_vm(&mut f).unwrap();
        assert_eq!(f.number, 2, "the VM numbers go on after a reopen");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
