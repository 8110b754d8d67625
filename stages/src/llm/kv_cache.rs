//! Keys and values of the tokens already seen, per layer, so generation runs each new token
//! through the model once (prefill the prompt, then one step per token).

use candle_core::{Result, Tensor};

use super::slots::TokenSlots;

/// The cache of one generation batch; create it with `LlamaModel::new_cache`.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// Per layer: keys and values `[batch, kv_heads, slots, head_dim]` (rope already applied).
    layers: Vec<Option<(Tensor, Tensor)>>,
    slots: TokenSlots,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            slots: TokenSlots::new(),
        }
    }

    /// Slots filled so far (prompt length including padding, plus generated steps).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Number of sequences, fixed by the first call.
    pub fn batch_size(&self) -> Option<usize> {
        self.slots.batch_size()
    }

    pub(crate) fn slots_mut(&mut self) -> &mut TokenSlots {
        &mut self.slots
    }

    /// Keeps only the sequences at `rows` (indices into the current batch, in the new order),
    /// e.g. to stop computing sequences that finished generating.
    pub fn retain_rows(&mut self, rows: &[usize]) -> Result<()> {
        let batch = self.batch_size().unwrap_or(0);
        if let Some(&bad) = rows.iter().find(|&&r| r >= batch) {
            candle_core::bail!("kv cache holds {batch} sequences, cannot keep row {bad}")
        }
        self.slots.retain_rows(rows);
        for entry in self.layers.iter_mut().flatten() {
            let device = entry.0.device().clone();
            let idx = Tensor::from_vec(
                rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                rows.len(),
                &device,
            )?;
            *entry = (
                entry.0.index_select(&idx, 0)?,
                entry.1.index_select(&idx, 0)?,
            );
        }
        Ok(())
    }

    /// Appends this step's keys and values of `layer` and returns all of them.
    pub(crate) fn extend(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let Some(entry) = self.layers.get_mut(layer) else {
            candle_core::bail!("kv cache has no layer {layer}")
        };
        // Detached: generation never backpropagates and the graph would pin every step.
        let (k, v) = (k.detach(), v.detach());
        let (k, v) = match entry.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        *entry = Some((k.clone(), v.clone()));
        Ok((k, v))
    }
}
