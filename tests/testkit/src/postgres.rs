//! A real PostgreSQL server for tests: the Debian server binaries that `hack/setup.sh tools`
//! extracts into `.cache/postgresql`, a fresh cluster (`initdb`) in a temporary folder, one
//! server on a free loopback port, stopped and removed on drop.
//!
//! PostgreSQL refuses to run as root; when the tests run as root (CI machines do), `initdb` and
//! the server run as `nobody` through `setpriv`, in a folder that user owns.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{Process, free_addr, workspace_root};

/// Major version `hack/setup.sh` installs.
pub const MAJOR: u32 = 15;

/// A running PostgreSQL server with a `switchboard` database, trust authentication on loopback.
#[derive(Debug)]
pub struct Postgres {
    process: Process,
    addr: SocketAddr,
    dir: PathBuf,
}

fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SWITCHBOARD_POSTGRES_BIN") {
        return Some(PathBuf::from(dir));
    }
    let cached = workspace_root().join(format!(".cache/postgresql/usr/lib/postgresql/{MAJOR}/bin"));
    cached.join("postgres").is_file().then_some(cached)
}

/// Libraries `hack/setup.sh` fetched next to the server when the machine lacked them.
fn library_path() -> String {
    let root = workspace_root().join(".cache/postgresql");
    let mut dirs: Vec<String> = ["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"]
        .iter()
        .map(|d| root.join(d))
        .filter(|d| d.is_dir())
        .map(|d| d.display().to_string())
        .collect();
    if let Ok(existing) = std::env::var("LD_LIBRARY_PATH") {
        dirs.push(existing);
    }
    dirs.join(":")
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program args...`, as `nobody` when we are root.
fn command(program: &Path, as_nobody: bool) -> Command {
    let mut command = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(program);
        c
    } else {
        Command::new(program)
    };
    command.env("LD_LIBRARY_PATH", library_path());
    command
}

impl Postgres {
    /// Whether the server binaries are installed (`hack/setup.sh tools`).
    pub fn available() -> bool {
        bin_dir().is_some()
    }

    /// Creates a cluster and starts a server on a free port; `log_dir` receives its log. Waits
    /// until it accepts connections, then creates the database `switchboard`.
    pub fn start(log_dir: &Path) -> Result<Self, String> {
        let bin = bin_dir().ok_or(
            "no PostgreSQL server binaries in .cache/postgresql: run `hack/setup.sh tools`",
        )?;
        let as_nobody = running_as_root();
        // A folder of its own under the system temp dir (world-traversable), owned by the server's
        // user: test work folders are private to the test's user.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "switchboard-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if as_nobody {
            let status = Command::new("chown")
                .args(["nobody:nogroup"])
                .arg(&dir)
                .status()
                .map_err(|e| format!("chown: {e}"))?;
            if !status.success() {
                return Err(format!("chown nobody {} failed", dir.display()));
            }
        }
        let data = dir.join("data");
        let output = command(&bin.join("initdb"), as_nobody)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .output()
            .map_err(|e| format!("cannot run initdb: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let addr = free_addr();
        let mut server = command(&bin.join("postgres"), as_nobody);
        server.arg("-D").arg(&data).args([
            "-p",
            &addr.port().to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "unix_socket_directories=",
            // A test database: durability of the machine's disk is not under test.
            "-c",
            "fsync=off",
            "-c",
            "max_connections=50",
        ]);
        let mut process = Process::spawn("postgres", server, log_dir)?;
        process.wait_for_port(addr, Duration::from_secs(30))?;
        let pg = Self { process, addr, dir };
        pg.psql("postgres", "CREATE DATABASE switchboard")?;
        Ok(pg)
    }

    /// Runs SQL with `psql` (the client on the machine, or the one next to the server).
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let mut last = String::new();
        // The port opens before the server accepts queries: retry while it starts up.
        for _ in 0..50 {
            let output = Command::new("psql")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.addr.port().to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    database,
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-At",
                    "-c",
                    sql,
                ])
                .output()
                .map_err(|e| format!("cannot run psql: {e}"))?;
            if output.status.success() {
                return Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned());
            }
            last = String::from_utf8_lossy(&output.stderr).into_owned();
            if !last.contains("starting up") && !last.contains("Connection refused") {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("psql {sql:?}: {last}"))
    }

    /// `postgres://postgres@127.0.0.1:<port>/switchboard`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@{}/switchboard", self.addr)
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server process.
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGTERM: a "smart" shutdown would wait for clients; the test is over.
        self.process.terminate(Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
