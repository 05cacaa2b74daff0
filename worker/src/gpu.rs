//! GPU discovery through NVML, loaded at run time (no build-time NVIDIA
//! dependency). NVML reads the driver's view of the devices and never
//! initialises CUDA, so the daemon holds no GPU context. No NVML means CPU only.

use liandan_proto::v1 as pb;

/// Keeps the GPUs named in `CUDA_VISIBLE_DEVICES` (indices or UUIDs, the way
/// SLURM and the NVIDIA device plugin set it); unset means all.
pub fn visible(all: Vec<pb::Gpu>, cuda_visible: Option<&str>) -> Vec<pb::Gpu> {
    let Some(list) = cuda_visible else { return all };
    let wanted: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    all.into_iter()
        .filter(|g| {
            wanted.iter().any(|w| {
                *w == g.index.to_string()
                    || *w == g.uuid
                    || (w.starts_with("GPU-") && g.uuid.starts_with(w))
            })
        })
        .collect()
}

/// The GPUs the driver reports, or none.
pub fn discover() -> Vec<pb::Gpu> {
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            tracing::info!(reason = %e, "no NVIDIA GPUs found (NVML unavailable); offering CPU slots only");
            return Vec::new();
        }
    };
    let count = nvml.device_count().unwrap_or(0);
    let mut out = Vec::new();
    for i in 0..count {
        let Ok(d) = nvml.device_by_index(i) else {
            continue;
        };
        let (Ok(uuid), Ok(name)) = (d.uuid(), d.name()) else {
            continue;
        };
        let memory_bytes = d.memory_info().map(|m| m.total).unwrap_or(0);
        tracing::info!(index = i, %uuid, %name, memory_bytes, "found GPU");
        out.push(pb::Gpu {
            index: i,
            uuid,
            name,
            memory_bytes,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(i: u32) -> pb::Gpu {
        pb::Gpu {
            index: i,
            uuid: format!("GPU-{i}aaa-bbbb"),
            name: "H100".into(),
            memory_bytes: 80 << 30,
        }
    }

    #[test]
    fn visible_devices_filter_by_index_or_uuid() {
        let all = || (0..4).map(gpu).collect::<Vec<_>>();
        let idx = |v: Vec<pb::Gpu>| v.iter().map(|g| g.index).collect::<Vec<_>>();
        assert_eq!(idx(visible(all(), None)), vec![0, 1, 2, 3]);
        assert_eq!(idx(visible(all(), Some("1,3"))), vec![1, 3]);
        assert_eq!(idx(visible(all(), Some("GPU-2aaa-bbbb"))), vec![2]);
        assert_eq!(idx(visible(all(), Some(""))), Vec::<u32>::new());
    }
}
