//! `dfs-fuse` / `mount.fuse.dfs`: mounts a dfs cluster.
//!
//! Without `-f` it starts itself in the background and returns only once the
//! mount is ready (exit 0), or with the daemon's error (exit 1), as mount(8)
//! expects of a helper.

use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use dfs_fuse::options;

fn main() -> ExitCode {
    dfs_fuse::allocator::keep_large_buffers_mapped();
    let opts = match options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("dfs-fuse: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = dfs_fuse::check_mountpoint(&opts) {
        eprintln!("dfs-fuse: {e}");
        return ExitCode::from(1);
    }
    if opts.foreground {
        dfs_common::logging::init();
        return match dfs_fuse::run_foreground(opts) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("dfs-fuse: {e}");
                ExitCode::from(1)
            }
        };
    }
    match background(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dfs-fuse: {e}");
            ExitCode::from(1)
        }
    }
}

/// Starts the daemon detached from this terminal and waits until it has mounted.
fn background(opts: &options::MountOptions) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let log_path = opts.log.clone().unwrap_or_else(|| {
        let name: String = opts
            .mountpoint
            .to_string_lossy()
            .chars()
            .map(|c| if c == '/' { '_' } else { c })
            .collect();
        std::env::temp_dir().join(format!("dfs-fuse{name}.log"))
    });
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    // Only what this daemon writes is shown on failure.
    let log_start = log.metadata()?.len() as usize;
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("-f")
        .args(std::env::args().skip(1).filter(|a| a != "-f"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if dfs_fuse::is_mounted(&opts.mountpoint) {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read(&log_path).unwrap_or_default();
            let text = String::from_utf8_lossy(text.get(log_start..).unwrap_or_default());
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            anyhow::bail!("mount failed ({status}):\n{}", tail.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    anyhow::bail!(
        "mount did not become ready within 30 s (log: {})",
        log_path.display()
    )
}
