//! What training minimises: token batches with their target masks, the SFT loss, ORPO and DPO.

pub mod batch;
pub mod dpo;
pub mod loss;
pub mod orpo;
