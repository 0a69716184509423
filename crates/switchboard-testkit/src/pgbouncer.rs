//! A real PgBouncer in transaction mode (Debian's `pgbouncer`), standing in
//! for Supavisor's port 6543. Each instance has its own port and directory;
//! a watchdog shell stops it when the test process goes away, so no test run
//! leaves one behind.
//!
//! Stock settings apart from the mode and the sizes: in particular no
//! `ignore_startup_parameters`, so a client that sends a startup parameter
//! PgBouncer does not know (sqlx's default `extra_float_digits`, `options`,
//! `search_path`) is refused here as a user's pooler would refuse it. Test
//! code that connects through it itself must connect as the service does
//! (`PgConnectOptions::extra_float_digits(None)`).

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

pub struct PgBouncer {
    pub port: u16,
    dir: PathBuf,
    watchdog: Option<Child>,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

impl PgBouncer {
    /// Starts one in front of `postgres_host:postgres_port`, on a new port.
    pub async fn start(postgres_host: &str, postgres_port: u16) -> PgBouncer {
        PgBouncer::start_on(postgres_host, postgres_port, free_port()).await
    }

    pub async fn start_on(postgres_host: &str, postgres_port: u16, port: u16) -> PgBouncer {
        PgBouncer::start_with_pool_size(postgres_host, postgres_port, port, 10).await
    }

    /// `pool_size` server connections per database and user: with 1, every
    /// client's transactions share one server connection, as the clients of
    /// a busy pooler eventually do.
    pub async fn start_with_pool_size(
        postgres_host: &str,
        postgres_port: u16,
        port: u16,
        pool_size: u32,
    ) -> PgBouncer {
        if Command::new("pgbouncer").arg("--version").output().is_err() {
            panic!(
                "pgbouncer is not installed: `apt-get install pgbouncer` (the suite runs \
                 every integration test through it in transaction mode too)"
            );
        }
        let dir = std::env::temp_dir().join(format!("switchboard-pgbouncer-{port}"));
        let _ = std::fs::create_dir_all(&dir);
        let ini = format!(
            "[databases]\n* = host={postgres_host} port={postgres_port}\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {dir}/users.txt\npool_mode = transaction\n\
             max_client_conn = 1000\ndefault_pool_size = {pool_size}\n\
             server_login_retry = 1\n\
             logfile = {dir}/pgbouncer.log\n",
            dir = dir.display()
        );
        let _ = std::fs::write(dir.join("pgbouncer.ini"), ini);
        let _ = std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n");
        let user = if is_root() {
            let _ = Command::new("chown")
                .arg("-R")
                .arg("postgres")
                .arg(&dir)
                .status();
            "-u postgres"
        } else {
            ""
        };
        let script = format!(
            "pgbouncer {user} {dir}/pgbouncer.ini & child=$!; \
             trap 'kill $child 2>/dev/null; exit 0' TERM INT; \
             while kill -0 {pid} 2>/dev/null && kill -0 $child 2>/dev/null; do sleep 0.2; done; \
             kill $child 2>/dev/null; sleep 0.2; rm -rf {dir}",
            dir = dir.display(),
            pid = std::process::id()
        );
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start pgbouncer: {e}"));
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return PgBouncer {
                    port,
                    dir,
                    watchdog: Some(watchdog),
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = watchdog.kill();
        let _ = watchdog.wait();
        let log = std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default();
        panic!("pgbouncer did not start on port {port}: {log}");
    }

    /// Stops it and waits until the port is closed.
    pub fn stop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = Command::new("kill").arg(watchdog.id().to_string()).status();
            let _ = watchdog.wait();
        }
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
