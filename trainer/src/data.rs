//! Datasets that need no download (generated with the project's portable
//! generator, so the same seed gives the same data everywhere) and loaders for
//! MNIST-style IDX files and CSV files. Errors name the file and what is wrong.

use liandan_common::rng::Rng;
use std::path::{Path, PathBuf};

/// A classification dataset in memory: features row-major.
pub struct Dataset {
    pub x: Vec<f32>,
    pub y: Vec<i64>,
    /// Shape of one sample: [d] for vectors, [c, h, w] for images.
    pub shape: Vec<i64>,
    pub classes: i64,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn sample_size(&self) -> usize {
        self.shape.iter().product::<i64>() as usize
    }

    /// Splits off the last `fraction` as validation data (the data is already
    /// in a seeded random order).
    pub fn split(self, fraction: f64) -> (Dataset, Dataset) {
        let n = self.len();
        let n_val = ((n as f64) * fraction).round() as usize;
        let n_train = n - n_val;
        let d = self.sample_size();
        let (xt, xv) = self.x.split_at(n_train * d);
        let (yt, yv) = self.y.split_at(n_train);
        (
            Dataset {
                x: xt.to_vec(),
                y: yt.to_vec(),
                shape: self.shape.clone(),
                classes: self.classes,
            },
            Dataset {
                x: xv.to_vec(),
                y: yv.to_vec(),
                shape: self.shape,
                classes: self.classes,
            },
        )
    }

    /// Reorders samples by a seeded permutation (before splitting).
    fn shuffled(self, seed: i64) -> Dataset {
        let d = self.sample_size();
        let perm = Rng::keyed("liandan-train.data-split", &[seed as u64]).permutation(self.len());
        let mut x = Vec::with_capacity(self.x.len());
        let mut y = Vec::with_capacity(self.y.len());
        for &i in &perm {
            x.extend_from_slice(&self.x[i * d..(i + 1) * d]);
            y.push(self.y[i]);
        }
        Dataset {
            x,
            y,
            shape: self.shape,
            classes: self.classes,
        }
    }
}

/// A data problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("task `{0}` needs --data=PATH")]
    NoPath(String),
}

fn file_err(path: &Path, message: impl Into<String>) -> DataError {
    DataError::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// `classes` interleaved spirals in 2-D.
pub fn spirals(n: usize, classes: usize, noise: f64, seed: i64) -> Dataset {
    let mut rng = Rng::keyed("liandan-train.spirals", &[seed as u64]);
    let mut x = Vec::with_capacity(n * 2);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % classes;
        let t = rng.uniform01();
        let r = t;
        let angle = t * 4.0 + c as f64 * 2.0 * std::f64::consts::PI / classes as f64;
        x.push((r * angle.cos() + noise * rng.normal01() * 0.2) as f32);
        x.push((r * angle.sin() + noise * rng.normal01() * 0.2) as f32);
        y.push(c as i64);
    }
    Dataset {
        x,
        y,
        shape: vec![2],
        classes: classes as i64,
    }
}

/// Gaussian blobs around `classes` centres on a circle.
pub fn blobs(n: usize, classes: usize, noise: f64, seed: i64) -> Dataset {
    let mut rng = Rng::keyed("liandan-train.blobs", &[seed as u64]);
    let mut x = Vec::with_capacity(n * 2);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % classes;
        let a = c as f64 * 2.0 * std::f64::consts::PI / classes as f64;
        x.push((a.cos() + 2.0 * noise * rng.normal01()) as f32);
        x.push((a.sin() + 2.0 * noise * rng.normal01()) as f32);
        y.push(c as i64);
    }
    Dataset {
        x,
        y,
        shape: vec![2],
        classes: classes as i64,
    }
}

/// Noisy XOR in 2-D: the label is whether the signs differ, with `noise` of labels flipped.
pub fn xor(n: usize, noise: f64, seed: i64) -> Dataset {
    let mut rng = Rng::keyed("liandan-train.xor", &[seed as u64]);
    let mut x = Vec::with_capacity(n * 2);
    let mut y = Vec::with_capacity(n);
    for _ in 0..n {
        let a = rng.uniform(-1.0, 1.0);
        let b = rng.uniform(-1.0, 1.0);
        let mut label = ((a > 0.0) != (b > 0.0)) as i64;
        if rng.uniform01() < noise * 0.5 {
            label = 1 - label;
        }
        x.push(a as f32);
        x.push(b as f32);
        y.push(label);
    }
    Dataset {
        x,
        y,
        shape: vec![2],
        classes: 2,
    }
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads an IDX file (unsigned bytes): returns (dims, data).
fn read_idx(path: &Path, want_dims: usize) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let b = std::fs::read(path).map_err(|e| file_err(path, format!("cannot read ({e})")))?;
    if b.len() < 4 || b[0] != 0 || b[1] != 0 {
        return Err(file_err(path, "not an IDX file (bad magic number)"));
    }
    if b[2] != 0x08 {
        return Err(file_err(
            path,
            format!(
                "IDX data type 0x{:02x} is not supported; only unsigned bytes (0x08)",
                b[2]
            ),
        ));
    }
    let ndims = b[3] as usize;
    if ndims != want_dims {
        return Err(file_err(
            path,
            format!("expected {want_dims} dimensions, found {ndims}"),
        ));
    }
    if b.len() < 4 + 4 * ndims {
        return Err(file_err(path, "truncated IDX header"));
    }
    let dims: Vec<usize> = (0..ndims).map(|i| be_u32(&b, 4 + 4 * i) as usize).collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, d| a.checked_mul(*d))
        .ok_or_else(|| file_err(path, "IDX dimensions overflow"))?;
    let body = &b[4 + 4 * ndims..];
    if body.len() != count {
        return Err(file_err(
            path,
            format!(
                "IDX header says {count} bytes of data, found {}",
                body.len()
            ),
        ));
    }
    Ok((dims, body.to_vec()))
}

/// MNIST-style IDX images (n × h × w, u8) and labels (n, u8).
pub fn idx(images: &Path, labels: Option<&Path>) -> Result<Dataset, DataError> {
    let (images, labels) = if images.is_dir() {
        (
            images.join("train-images-idx3-ubyte"),
            labels
                .map(Path::to_path_buf)
                .unwrap_or_else(|| images.join("train-labels-idx1-ubyte")),
        )
    } else {
        let l = labels
            .map(Path::to_path_buf)
            .unwrap_or_else(|| images.with_file_name("train-labels-idx1-ubyte"));
        (images.to_path_buf(), l)
    };
    let (d, px) = read_idx(&images, 3)?;
    let (ld, lb) = read_idx(&labels, 1)?;
    if ld[0] != d[0] {
        return Err(file_err(
            &labels,
            format!(
                "{} labels for {} images in {}",
                ld[0],
                d[0],
                images.display()
            ),
        ));
    }
    let classes = lb.iter().copied().max().unwrap_or(0) as i64 + 1;
    Ok(Dataset {
        x: px.iter().map(|&p| p as f32 / 255.0).collect(),
        y: lb.iter().map(|&l| l as i64).collect(),
        shape: vec![1, d[1] as i64, d[2] as i64],
        classes: classes.max(2),
    })
}

/// CSV: numeric features, the last column an integer class label; an optional header line.
pub fn csv(path: &Path) -> Result<Dataset, DataError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| file_err(path, format!("cannot read ({e})")))?;
    let mut x = Vec::new();
    let mut y = Vec::new();
    let mut width = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let nums: Result<Vec<f64>, _> = cells.iter().map(|c| c.parse::<f64>()).collect();
        let nums = match nums {
            Ok(n) => n,
            Err(_) if i == 0 => continue, // a header
            Err(_) => {
                let bad = cells
                    .iter()
                    .find(|c| c.parse::<f64>().is_err())
                    .unwrap_or(&"");
                return Err(file_err(
                    path,
                    format!("line {}: {bad:?} is not a number", i + 1),
                ));
            }
        };
        if nums.len() < 2 {
            return Err(file_err(
                path,
                format!("line {}: needs at least one feature and a label", i + 1),
            ));
        }
        match width {
            None => width = Some(nums.len()),
            Some(w) if w != nums.len() => {
                return Err(file_err(
                    path,
                    format!("line {}: {} columns, expected {w}", i + 1, nums.len()),
                ))
            }
            _ => {}
        }
        let label = nums[nums.len() - 1];
        if label < 0.0 || label.fract() != 0.0 {
            return Err(file_err(path, format!("line {}: the label (last column) must be a non-negative integer, found {label}", i + 1)));
        }
        x.extend(nums[..nums.len() - 1].iter().map(|v| *v as f32));
        y.push(label as i64);
    }
    let w = width.ok_or_else(|| file_err(path, "no data rows"))?;
    let classes = y.iter().copied().max().unwrap_or(0) + 1;
    Ok(Dataset {
        x,
        y,
        shape: vec![(w - 1) as i64],
        classes: classes.max(2),
    })
}

/// Loads the dataset the parameters name, in a seeded order.
pub fn load(
    task: &str,
    data: &str,
    labels: &str,
    samples: usize,
    classes: usize,
    noise: f64,
    seed: i64,
) -> Result<Dataset, DataError> {
    let ds = match task {
        "spirals" => spirals(samples, classes, noise, seed),
        "blobs" => blobs(samples, classes, noise, seed),
        "xor" => xor(samples, noise, seed),
        "idx" => {
            if data.is_empty() {
                return Err(DataError::NoPath(task.into()));
            }
            idx(
                Path::new(data),
                (!labels.is_empty()).then(|| Path::new(labels)),
            )?
        }
        _ => {
            if data.is_empty() {
                return Err(DataError::NoPath(task.into()));
            }
            csv(Path::new(data))?
        }
    };
    Ok(ds.shuffled(seed))
}
