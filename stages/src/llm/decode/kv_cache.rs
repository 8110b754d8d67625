//! Keys and values of the tokens already seen, per layer, so generation runs each new token
//! through the model once (prefill the prompt, then one step per token). Each layer's buffers
//! have room to spare and grow by doubling, so a step writes its keys in place instead of
//! copying the whole cache into a fresh allocation (which cost ~5% of a batch-8 decode step
//! in copying and page zeroing).

use candle_core::{Result, Tensor};

use crate::llm::model::slots::TokenSlots;

/// The cache of one generation batch; create it with `LlamaModel::new_cache`. Not `Clone`: a
/// clone would share the buffers that steps write in place.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    slots: TokenSlots,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| None).collect(),
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
            let device = entry.k.device().clone();
            let idx = Tensor::from_vec(
                rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                rows.len(),
                &device,
            )?;
            entry.k = entry.k.index_select(&idx, 0)?;
            entry.v = entry.v.index_select(&idx, 0)?;
        }
        Ok(())
    }

    /// Appends this step's keys and values of `layer` and returns all of them: views of the
    /// first filled slots of the layer's buffers (`[batch, kv_heads, len, head_dim]`, each
    /// head's rows contiguous, heads `capacity` rows apart).
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
        let (k, v) = (k.detach().contiguous()?, v.detach().contiguous()?);
        let cache = match entry {
            Some(cache) => cache,
            None => entry.insert(LayerCache::empty(&k, k.dim(2)?)?),
        };
        cache.append(&k, &v)?;
        cache.filled()
    }
}

/// One layer's buffers `[batch, kv_heads, capacity, head_dim]`, of which the first `len`
/// slots are filled.
#[derive(Debug)]
struct LayerCache {
    k: Tensor,
    v: Tensor,
    len: usize,
}

/// Slots a new buffer has at least; small caches would otherwise double many times.
const MIN_CAPACITY: usize = 64;

impl LayerCache {
    /// Empty buffers shaped like `like` (`[batch, kv_heads, _, head_dim]`) with room for
    /// `needed` slots.
    fn empty(like: &Tensor, needed: usize) -> Result<Self> {
        let (b, h, _, d) = like.dims4()?;
        let capacity = capacity_for(needed);
        let zeros = || Tensor::zeros((b, h, capacity, d), like.dtype(), like.device());
        Ok(Self {
            k: zeros()?,
            v: zeros()?,
            len: 0,
        })
    }

    fn capacity(&self) -> usize {
        self.k.dim(2).unwrap_or(0)
    }

    /// Writes `k`, `v` (contiguous, `[batch, kv_heads, new, head_dim]`) after the filled slots,
    /// moving to buffers twice as large first when they do not fit.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<()> {
        let new = k.dim(2)?;
        if self.len + new > self.capacity() {
            let mut grown = LayerCache::empty(k, self.len + new)?;
            grown.k.slice_set(&self.k, 2, 0)?;
            grown.v.slice_set(&self.v, 2, 0)?;
            grown.len = self.len;
            *self = grown;
        }
        self.k.slice_set(k, 2, self.len)?;
        self.v.slice_set(v, 2, self.len)?;
        self.len += new;
        Ok(())
    }

    fn filled(&self) -> Result<(Tensor, Tensor)> {
        Ok((
            self.k.narrow(2, 0, self.len)?,
            self.v.narrow(2, 0, self.len)?,
        ))
    }
}

/// Buffer slots for `needed`: the next power of two, at least [`MIN_CAPACITY`].
fn capacity_for(needed: usize) -> usize {
    needed.next_power_of_two().max(MIN_CAPACITY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn step(batch: usize, new: usize, seed: f64) -> Result<Tensor> {
        let n = batch * 2 * new * 4;
        let values: Vec<f32> = (0..n)
            .map(|i| (i as f64 * 0.37 + seed).sin() as f32)
            .collect();
        Tensor::from_vec(values, (batch, 2, new, 4), &Device::Cpu)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// Across several doublings, what the cache returns equals every step concatenated, and
    /// dropping rows afterwards keeps the right sequences.
    #[test]
    fn returns_all_appended_steps_across_growth_and_row_drops() -> Result<()> {
        let mut cache = KvCache::new(1);
        let mut all: Vec<Tensor> = Vec::new();
        let steps = [50, 1, 13, 1, 70, 1];
        for (i, &new) in steps.iter().enumerate() {
            let k = step(3, new, i as f64)?;
            let v = (&k * 2.0)?;
            cache.slots_mut().append(&vec![vec![true; new]; 3])?;
            let (ck, cv) = cache.extend(0, &k, &v)?;
            all.push(k);
            let want = Tensor::cat(&all, 2)?;
            assert_eq!(ck.dims(), want.dims());
            assert_eq!(max_diff(&ck, &want)?, 0.0);
            assert_eq!(max_diff(&cv, &(&want * 2.0)?)?, 0.0);
        }
        let layer = cache.layers[0].as_ref().map(LayerCache::capacity);
        assert_eq!(layer, Some(256), "136 slots in power-of-two buffers");

        cache.retain_rows(&[2, 0])?;
        let k = step(2, 1, 9.0)?;
        cache.slots_mut().append(&vec![vec![true]; 2])?;
        let (ck, _) = cache.extend(0, &k, &k)?;
        let kept =
            Tensor::cat(&all, 2)?.index_select(&Tensor::new(&[2u32, 0], &Device::Cpu)?, 0)?;
        let want = Tensor::cat(&[&kept, &k], 2)?;
        assert_eq!(max_diff(&ck, &want)?, 0.0);
        assert!(cache.retain_rows(&[5]).is_err());
        Ok(())
    }

    #[test]
    fn capacities_are_powers_of_two_with_a_floor() {
        assert_eq!(capacity_for(1), MIN_CAPACITY);
        assert_eq!(capacity_for(65), 128);
        assert_eq!(capacity_for(128), 128);
    }
}
