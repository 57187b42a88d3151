//! Replays what the fuzzer kept, on stable: every file of `fuzz/corpus/<target>/` (minimised with `cargo fuzz
//! cmin`) and of `fuzz/regressions/<target>/` (inputs that once failed, kept under names saying what broke,
//! since `cmin` may drop them) through the target's entry point.

use std::path::Path;

/// Feeds every committed input of `target` to `entry`, naming the file that fails. Panics if there are none,
/// so a misplaced corpus cannot make the replay pass vacuously.
pub fn replay(target: &str, entry: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut inputs = 0;
    for dir in [fuzz.join("corpus"), fuzz.join("regressions")] {
        let Ok(files) = std::fs::read_dir(dir.join(target)) else {
            continue;
        };
        for file in files {
            let path = file.expect("corpus entry").path();
            let data = std::fs::read(&path).expect("corpus file");
            if std::panic::catch_unwind(|| entry(&data)).is_err() {
                panic!("{} fails {target}", path.display());
            }
            inputs += 1;
        }
    }
    assert!(inputs > 0, "no committed inputs for {target}");
}
