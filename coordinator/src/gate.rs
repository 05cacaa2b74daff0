//! A gate tests close to hold a background step (the store's writer between
//! batches, the proposer before it fits) and see what callers are told or
//! can do meanwhile. Open unless a test holds it; passing costs one
//! uncontended lock.

use std::sync::{Arc, Condvar, Mutex};

#[derive(Default)]
pub struct Gate {
    held: Mutex<bool>,
    released: Condvar,
    waiting: std::sync::atomic::AtomicUsize,
}

impl Gate {
    /// Blocks the calling thread while the gate is held.
    pub fn wait_open(&self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if *held {
            self.waiting
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            while *held {
                held = self.released.wait(held).unwrap_or_else(|p| p.into_inner());
            }
            self.waiting
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// How many threads wait at the gate now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Closes the gate until the returned guard drops.
    pub fn hold(self: &Arc<Self>) -> Hold {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = true;
        Hold(self.clone())
    }
}

/// While alive, the gate it came from is closed.
pub struct Hold(Arc<Gate>);

impl Drop for Hold {
    fn drop(&mut self) {
        *self.0.held.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.0.released.notify_all();
    }
}
