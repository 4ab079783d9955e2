//! A no-op controller: reports back the greeting of its section.

use std::sync::Arc;

use skiff_shared::sections::demo::Demo;

use crate::controller::Context;
use crate::supervisor::Host;

#[derive(Debug)]
pub struct Controller;

impl Controller {
    pub fn new(_host: &Host) -> Self {
        Self
    }
}

impl crate::controller::Controller for Controller {
    type Kind = Demo;

    async fn run(self: Arc<Self>, mut cx: Context<Demo>) {
        loop {
            let desired = cx.desired.borrow_and_update().clone();
            if let Some(d) = desired {
                cx.reports.send(&d.value);
            }
            tokio::select! {
                () = cx.tree.cancelled() => return,
                r = cx.desired.changed() => if r.is_err() { return },
            }
        }
    }
}
