//! GPU discovery through NVML, loaded at run time (no build-time NVIDIA
//! dependency). NVML reads the driver's view of the devices and never
//! initialises CUDA, so the daemon holds no GPU context. No NVML means CPU only.

use liandan_proto::v1 as pb;

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
