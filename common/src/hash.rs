//! Content hashes of checkpoint files (BLAKE3), shared by the coordinator,
//! which verifies what it stores and serves, and the worker, which hashes what
//! a job publishes and what it downloads.

use std::io::Read;
use std::path::PathBuf;

/// Chunk size of file reads and of checkpoint streams.
pub const CHUNK: usize = 1 << 20;

/// BLAKE3 (hex) and size of a file, computed on a blocking thread.
pub async fn hash_file(path: PathBuf) -> std::io::Result<(String, u64)> {
    tokio::task::spawn_blocking(move || hash_reader(std::fs::File::open(&path)?))
        .await
        .map_err(std::io::Error::other)?
}

/// BLAKE3 (hex) and length of everything `f` reads (call it off the runtime).
pub fn hash_reader(mut f: impl Read) -> std::io::Result<(String, u64)> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        n += k as u64;
        h.update(&buf[..k]);
    }
    Ok((h.finalize().to_hex().to_string(), n))
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn hashes_match_blake3_of_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let (h, n) = super::hash_file(p).await.unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(h, blake3::hash(&data).to_hex().to_string());
    }
}
