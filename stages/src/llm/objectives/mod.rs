//! What training minimises: token batches with their target masks, the SFT loss and ORPO.

pub mod batch;
pub mod loss;
pub mod orpo;
