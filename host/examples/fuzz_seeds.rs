//! Writes the fuzz targets' seed inputs: `fuzz_seeds DIR [IMAGE] [SNAPSHOT_STATE] [BACKUP_META]`
//! writes `DIR/<target>/seed-N` for every target, from `tandem::fuzzing::seeds`
//! and from the real files given (an image, a snapshot state file, a backup
//! point's metadata). Run by `cargo xtask fuzz`.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first() else {
        eprintln!("usage: fuzz_seeds DIR [IMAGE] [SNAPSHOT_STATE] [BACKUP_META]");
        std::process::exit(2);
    };
    let dir = Path::new(dir);
    let files = [
        ("elf_image", args.get(1)),
        ("snapshot_state", args.get(2)),
        ("backup_point", args.get(3)),
    ];
    for (name, _) in tandem::fuzzing::TARGETS {
        let target = dir.join(name);
        std::fs::create_dir_all(&target)?;
        let mut seeds = tandem::fuzzing::seeds(name);
        for (file_target, path) in files {
            if file_target == *name {
                if let Some(path) = path {
                    seeds.push(std::fs::read(path)?);
                }
            }
        }
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(target.join(format!("seed-{i}")), seed)?;
        }
    }
    Ok(())
}
