//! Typed access: plain-old-data values and slices read and written at any
//! byte offset of a region, in or out of a transaction, through `bytemuck`.
//! Layout, alignment and bounds are described in the crate documentation
//! (*Typed access*). Values are copied between the region's bytes and a
//! value of the caller's, which is aligned as its type needs: that is why
//! no offset needs alignment.

use bytemuck::Pod;

use crate::error::ClientError;
use crate::region::Region;
use crate::transaction::Transaction;

/// The bytes of `values`, for a type of any size (`bytemuck` refuses to cast
/// a slice of zero-sized values to bytes; they have none).
fn slice_bytes<T: Pod>(values: &[T]) -> &[u8] {
    if size_of::<T>() == 0 {
        return &[];
    }
    bytemuck::cast_slice(values)
}

/// The bytes of `values`, writable; see [`slice_bytes`].
fn slice_bytes_mut<T: Pod>(values: &mut [T]) -> &mut [u8] {
    if size_of::<T>() == 0 {
        return &mut [];
    }
    bytemuck::cast_slice_mut(values)
}

impl Region {
    /// Reads a value of type `T` stored at `offset` (any byte offset). Values
    /// are stored as the host holds them in memory, little-endian on every
    /// host Pagoda runs on; see the crate documentation's *Typed access*.
    /// Fails with [`ClientError::OutOfRange`] if the value does not lie
    /// wholly inside the region.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let node = pagoda_node::Node::start(pagoda_node::NodeConfig::new(
    /// #     "127.0.0.1:0".parse().unwrap(), 8 << 20, dir.path().into())).unwrap();
    /// # let address = node.local_addr();
    /// use pagoda::{Client, ClientOptions, RegionOptions};
    ///
    /// let client = Client::connect(address, ClientOptions::default())?;
    /// let region = client.open_or_create_region("counters", 1 << 20, 4096, RegionOptions::default())?;
    /// region.write_value(4093, &42u64)?; // any offset: this one straddles two pages
    /// assert_eq!(region.read_value::<u64>(4093)?, 42);
    /// # Ok::<(), pagoda::ClientError>(())
    /// ```
    pub fn read_value<T: Pod>(&self, offset: u64) -> Result<T, ClientError> {
        let mut value = T::zeroed();
        self.read_at(offset, bytemuck::bytes_of_mut(&mut value))?;
        Ok(value)
    }

    /// Writes `value` at `offset` (any byte offset), as the host holds it in
    /// memory. Like [`Region::write_at`], it lands in the local cache; call
    /// [`Region::flush`] to know it is on the node.
    pub fn write_value<T: Pod>(&self, offset: u64, value: &T) -> Result<(), ClientError> {
        self.write_at(offset, bytemuck::bytes_of(value))
    }

    /// Fills `values` with the `values.len()` values of type `T` stored one
    /// after another from `offset` (any byte offset).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let node = pagoda_node::Node::start(pagoda_node::NodeConfig::new(
    /// #     "127.0.0.1:0".parse().unwrap(), 8 << 20, dir.path().into())).unwrap();
    /// # let address = node.local_addr();
    /// use pagoda::{Client, ClientOptions, RegionOptions};
    ///
    /// let client = Client::connect(address, ClientOptions::default())?;
    /// let region = client.open_or_create_region("embeddings", 1 << 20, 4096, RegionOptions::default())?;
    /// let embedding: Vec<f32> = (0..768).map(|i| i as f32 * 0.5).collect();
    /// let row = 3u64;
    /// region.write_slice(row * 768 * 4, &embedding)?;
    /// let mut back = vec![0f32; 768];
    /// region.read_slice(row * 768 * 4, &mut back)?;
    /// assert_eq!(back, embedding);
    /// # Ok::<(), pagoda::ClientError>(())
    /// ```
    pub fn read_slice<T: Pod>(&self, offset: u64, values: &mut [T]) -> Result<(), ClientError> {
        self.read_at(offset, slice_bytes_mut(values))
    }

    /// Writes `values` one after another from `offset` (any byte offset).
    pub fn write_slice<T: Pod>(&self, offset: u64, values: &[T]) -> Result<(), ClientError> {
        self.write_at(offset, slice_bytes(values))
    }
}

impl Transaction<'_> {
    /// Reads a value of type `T` stored at `offset`, including this
    /// transaction's own writes; locks its pages like
    /// [`Transaction::read_at`] (propagate `ClientError::Conflict` with `?`).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let node = pagoda_node::Node::start(pagoda_node::NodeConfig::new(
    /// #     "127.0.0.1:0".parse().unwrap(), 8 << 20, dir.path().into())).unwrap();
    /// # let address = node.local_addr();
    /// use pagoda::{Client, ClientOptions, RegionOptions};
    ///
    /// let client = Client::connect(address, ClientOptions::default())?;
    /// let region = client.open_or_create_region("accounts", 1 << 20, 4096, RegionOptions::default())?;
    /// region.write_value(0, &100u64)?;
    /// // Move 10 from the account at offset 0 to the one at offset 8192.
    /// region.transaction(|tx| {
    ///     let from: u64 = tx.read_value(0)?;
    ///     let to: u64 = tx.read_value(8192)?;
    ///     tx.write_value(0, &(from - 10))?;
    ///     tx.write_value(8192, &(to + 10))
    /// })?;
    /// assert_eq!(region.read_value::<u64>(0)?, 90);
    /// assert_eq!(region.read_value::<u64>(8192)?, 10);
    /// # Ok::<(), pagoda::ClientError>(())
    /// ```
    pub fn read_value<T: Pod>(&mut self, offset: u64) -> Result<T, ClientError> {
        let mut value = T::zeroed();
        self.read_at(offset, bytemuck::bytes_of_mut(&mut value))?;
        Ok(value)
    }

    /// Writes `value` at `offset` when the transaction commits.
    pub fn write_value<T: Pod>(&mut self, offset: u64, value: &T) -> Result<(), ClientError> {
        self.write_at(offset, bytemuck::bytes_of(value))
    }

    /// Fills `values` from `offset`, including this transaction's own
    /// writes; see [`Transaction::read_value`].
    pub fn read_slice<T: Pod>(&mut self, offset: u64, values: &mut [T]) -> Result<(), ClientError> {
        self.read_at(offset, slice_bytes_mut(values))
    }

    /// Writes `values` one after another from `offset` when the transaction
    /// commits.
    pub fn write_slice<T: Pod>(&mut self, offset: u64, values: &[T]) -> Result<(), ClientError> {
        self.write_at(offset, slice_bytes(values))
    }
}
