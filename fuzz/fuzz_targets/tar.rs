//! The tar extractor on arbitrary archives, into a scratch destination with a tablespace
//! location and an `outside` directory beside it: it must never panic, and nothing outside
//! the destination and the tablespace location may change.
#![no_main]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use walseal::restore::tar::{self, Listing, Policy, Root};

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // In memory where there is a tmpfs: the extractor's system calls are the cost.
        let tmp = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = tmp.join(format!("walseal-fuzz-tar-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["dest", "ts", "outside"] {
            std::fs::create_dir_all(dir.join(d)).expect("scratch dirs");
        }
        std::fs::write(dir.join("outside/sentinel"), b"keep").expect("sentinel");
        dir
    })
}

fn clear(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            // The archive may have set a mode without owner rwx.
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700));
            clear(&p);
            let _ = std::fs::remove_dir(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
}

fn outside_intact(base: &Path) -> bool {
    let entries: Vec<_> = std::fs::read_dir(base.join("outside"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let top: Vec<_> = std::fs::read_dir(base)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    entries.len() == 1
        && std::fs::read(base.join("outside/sentinel")).ok().as_deref() == Some(&b"keep"[..])
        && top.len() == 3
}

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(64 << 10)];
    let base = scratch();
    let root = Root::open(&base.join("dest")).expect("scratch root");
    let mut listing: Listing<()> = Listing::default();
    for (path, size) in [("a", 5u64), ("base/1/1", 0), ("global/pg_control", 8192), ("b/c", 3)] {
        listing.insert(path.as_bytes().to_vec(), size, ());
    }
    let mut links = BTreeMap::new();
    links.insert(16384u32, base.join("ts"));
    let mut policy = Policy {
        archive: "base.tar",
        prefix: b"",
        listing: &mut listing,
        links: &links,
        direct_io: false,
    };
    let _ = tar::extract(
        data,
        &root,
        &mut policy,
        &mut |_, _| Ok(()),
        &|e| walseal::error::local_io("fuzz input", &e),
    );
    assert!(outside_intact(base), "something outside the destination changed");
    clear(&base.join("dest"));
    clear(&base.join("ts"));
});
