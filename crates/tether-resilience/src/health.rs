//! Placeholder; replaced by the health implementation.
#[derive(Debug)]
pub enum Health {}
#[derive(Debug)]
pub struct HealthConfig;
#[derive(Debug)]
pub struct HealthTracker;
