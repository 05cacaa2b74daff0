//! The tools of the faults: a TCP proxy that can cut its connections (a
//! partition), a small file system the harness fills, and client RPCs cut
//! off in the middle.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A TCP forwarder that can cut every connection through it (a partition).
pub struct Proxy {
    pub addr: String,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c2, k2, s2) = (cut.clone(), conns.clone(), stop.clone());
        listener.set_nonblocking(true).expect("nonblocking");
        std::thread::spawn(move || {
            while !s2.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                if c2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                for s in [&client, &server] {
                    if let Ok(c) = s.try_clone() {
                        k2.lock().unwrap_or_else(|p| p.into_inner()).push(c);
                    }
                }
                pipe(client.try_clone().ok(), server.try_clone().ok());
                pipe(server.try_clone().ok(), client.try_clone().ok());
            }
        });
        Proxy {
            addr,
            cut,
            conns,
            stop,
        }
    }

    /// Cuts all connections and refuses new ones until `heal`.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

fn pipe(from: Option<TcpStream>, to: Option<TcpStream>) {
    let (Some(mut from), Some(mut to)) = (from, to) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

/// A small file system (tmpfs) mounted on a worker's state dir, so the
/// harness can fill it; unmounted on drop. Needs root (CI and this project's
/// machines run as root); elsewhere the disk-full fault is skipped.
pub(super) struct SmallFs {
    path: std::path::PathBuf,
}

impl SmallFs {
    pub(super) fn mount(path: &Path, bytes: u64) -> Option<SmallFs> {
        std::fs::create_dir_all(path).ok()?;
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallFs {
            path: path.to_path_buf(),
        })
    }

    /// Fills the file system to the last byte; returns the filler's path.
    pub(super) fn fill(&self) -> std::path::PathBuf {
        let p = self.path.join("filler");
        if let Ok(mut f) = std::fs::File::create(&p) {
            let block = vec![0u8; 1 << 20];
            while f.write_all(&block).is_ok() {}
            let small = [0u8; 4096];
            while f.write_all(&small).is_ok() {}
            let _ = f.write_all(&[0u8; 512]);
        }
        p
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Starts downloading a stored checkpoint of `job` and goes away after
/// `chunks` chunks (Ctrl-C, a dropped link, a resume fetch cut off).
pub(super) fn cut_download(rt: &tokio::runtime::Runtime, url: &str, job: &str, chunks: u64) {
    use liandan_proto::v1 as pb;
    rt.block_on(async {
        let Ok(mut user) =
            pb::user_service_client::UserServiceClient::connect(url.to_string()).await
        else {
            return;
        };
        let req = pb::DownloadCheckpointRequest {
            job_id: job.into(),
            step: -1,
            offset: 0,
        };
        let Ok(r) =
            tokio::time::timeout(Duration::from_secs(5), user.download_checkpoint(req)).await
        else {
            return;
        };
        if let Ok(r) = r {
            let mut stream = r.into_inner();
            for _ in 0..chunks {
                if !matches!(stream.message().await, Ok(Some(_))) {
                    break;
                }
            }
        }
    });
}

/// Sends a cancel of `sweep` and goes away after `ms`.
pub(super) fn cut_cancel(rt: &tokio::runtime::Runtime, url: &str, sweep: &str, ms: u64) {
    use liandan_proto::v1 as pb;
    rt.block_on(async {
        let Ok(mut user) =
            pb::user_service_client::UserServiceClient::connect(url.to_string()).await
        else {
            return;
        };
        let call = user.cancel_sweep(pb::SweepRef {
            sweep_id: sweep.into(),
        });
        let _ = tokio::time::timeout(Duration::from_millis(ms), call).await;
    })
}
