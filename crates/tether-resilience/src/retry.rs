//! Placeholder; replaced by the retry implementation.
#[derive(Debug)]
pub enum Decision {}
#[derive(Debug)]
pub enum GiveUp {}
#[derive(Debug)]
pub struct RetryBudget;
#[derive(Debug)]
pub struct RetryPolicy;
#[derive(Debug)]
pub struct RetryState;
