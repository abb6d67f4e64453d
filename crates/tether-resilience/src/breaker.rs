//! Placeholder; replaced by the breaker implementation.
#[derive(Debug)]
pub struct Breaker;
#[derive(Debug)]
pub struct BreakerConfig;
#[derive(Debug)]
pub enum BreakerState {}
