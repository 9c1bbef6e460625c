//! Reconcile slots: at most `total` DatabaseConnection reconciles run at once, and at most
//! `per_namespace` of them for connections of one namespace.
//!
//! A reconcile waits for its namespace's slot first and only then for one of the shared
//! slots, so a tenant's backlog (or its stalling servers) queues behind its own share and
//! never ahead of another namespace. Both waits are first come, first served (tokio's
//! semaphores are fair), and a waiting reconcile costs a few hundred bytes, not a slot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Slots {
    total: Arc<Semaphore>,
    per_namespace: usize,
    namespaces: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// Held while a reconcile runs; dropping it frees both slots.
pub struct Slot {
    // `None` only if a semaphore were closed, which neither ever is.
    _namespace: Option<OwnedSemaphorePermit>,
    _total: Option<OwnedSemaphorePermit>,
}

impl Slots {
    /// `total` and `per_namespace` are at least 1 (a 0 would stop every reconcile).
    pub fn new(total: u16, per_namespace: u16) -> Self {
        Self {
            total: Arc::new(Semaphore::new(usize::from(total.max(1)))),
            per_namespace: usize::from(per_namespace.max(1)),
            namespaces: Mutex::default(),
        }
    }

    /// Waits for a slot of `namespace`, then for a shared one.
    pub async fn acquire(&self, namespace: &str) -> Slot {
        let own = self.namespace(namespace).acquire_owned().await.ok();
        let total = self.total.clone().acquire_owned().await.ok();
        Slot {
            _namespace: own,
            _total: total,
        }
    }

    fn namespace(&self, namespace: &str) -> Arc<Semaphore> {
        let mut map = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get(namespace) {
            return s.clone();
        }
        // Namespaces come and go: forget those nobody holds or waits on (only the map refers
        // to them), so the map is as large as the namespaces busy at once.
        if map.len() >= 64 {
            map.retain(|_, s| Arc::strong_count(s) > 1);
        }
        map.entry(namespace.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_namespace)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// True when `f` completes without waiting for anything else to happen.
    async fn at_once<F: Future>(f: F) -> Option<F::Output> {
        tokio::time::timeout(Duration::ZERO, f).await.ok()
    }

    #[tokio::test]
    async fn a_namespace_holding_its_share_leaves_the_rest_to_others() {
        let slots = Slots::new(4, 2);
        let a1 = at_once(slots.acquire("a")).await.expect("first of a");
        let _a2 = at_once(slots.acquire("a")).await.expect("second of a");
        // a's third waits on a's share, not on the shared slots...
        assert!(at_once(slots.acquire("a")).await.is_none());
        // ...which another namespace still gets.
        let _b1 = at_once(slots.acquire("b")).await.expect("b");
        let _b2 = at_once(slots.acquire("b")).await.expect("b");
        // All four shared slots are taken now: c waits until one is freed.
        let c = slots.acquire("c");
        tokio::pin!(c);
        assert!(at_once(&mut c).await.is_none());
        drop(a1);
        assert!(at_once(&mut c).await.is_some());
    }

    #[tokio::test]
    async fn waiters_of_one_namespace_run_in_arrival_order() {
        let slots = Arc::new(Slots::new(1, 1));
        let first = slots.acquire("a").await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (slots, order) = (slots.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = slots.acquire("a").await;
                order.lock().unwrap().push(i);
            }));
            // Each waiter queues before the next one is started.
            tokio::task::yield_now().await;
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
    }

    #[test]
    fn idle_namespaces_are_forgotten() {
        let slots = Slots::new(2, 1);
        for i in 0..200 {
            drop(slots.namespace(&format!("ns-{i}")));
        }
        assert!(slots.namespaces.lock().unwrap().len() <= 64);
    }
}
