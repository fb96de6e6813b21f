//! Fencing tokens across lock backends. A token is one `u64` on the wire and in every fence
//! row, compared as a number; its high bits are the **fencing epoch**, its low
//! [`EPOCH_SHIFT`] bits the lock backend's own counter (etcd: the lock key's create revision;
//! embedded: the state store's counter).
//!
//! Within one backend the counter only grows, so a deposed leader's token is lower than its
//! successor's. Two backends' counters are not comparable (a new etcd cluster starts at 1,
//! an embedded coordinator may have reached 7): the epoch orders backends. A backend's epoch
//! is stored in its own state store and changes only by the fenced operator step
//! `flotilla fence takeover`, which sets it above every epoch the fleet's targets have
//! accepted. From then on every token of the new backend is higher than any token an older
//! backend can produce, however far its counter grows (below 2^40), and a backend that never
//! took over (a recreated etcd cluster, an old embedded state dir) is refused by every target.
//! Data written before epochs existed is epoch 0: its tokens are unchanged.

/// Bits of a token that hold the backend's counter; the epoch is above them.
pub const EPOCH_SHIFT: u32 = 40;

/// The largest counter a token can carry.
pub const MAX_COUNTER: u64 = (1 << EPOCH_SHIFT) - 1;

/// The largest epoch a token can carry.
pub const MAX_EPOCH: u64 = u64::MAX >> EPOCH_SHIFT >> 1;

/// The token of `counter` in `epoch`; `None` when either is out of range (the counter
/// above [`MAX_COUNTER`], the epoch above [`MAX_EPOCH`]: tokens stay below 2^63, what every
/// history table's BIGINT holds).
pub fn compose(epoch: u64, counter: u64) -> Option<u64> {
    (counter <= MAX_COUNTER && epoch <= MAX_EPOCH).then_some((epoch << EPOCH_SHIFT) | counter)
}

/// The epoch a token belongs to.
pub fn epoch_of(token: u64) -> u64 {
    token >> EPOCH_SHIFT
}

/// The backend counter inside a token.
pub fn counter_of(token: u64) -> u64 {
    token & MAX_COUNTER
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_zero_tokens_are_the_counter() {
        assert_eq!(compose(0, 7), Some(7));
        assert_eq!(epoch_of(7), 0);
        assert_eq!(counter_of(7), 7);
    }

    #[test]
    fn any_token_of_a_higher_epoch_is_higher() {
        let old = compose(0, MAX_COUNTER).unwrap();
        let new = compose(1, 1).unwrap();
        assert!(new > old);
        assert_eq!((epoch_of(new), counter_of(new)), (1, 1));
    }

    #[test]
    fn out_of_range_parts_are_refused() {
        assert_eq!(compose(0, MAX_COUNTER + 1), None);
        assert_eq!(compose(MAX_EPOCH + 1, 1), None);
        let top = compose(MAX_EPOCH, MAX_COUNTER).unwrap();
        assert!(top <= i64::MAX as u64, "tokens fit a BIGINT");
    }
}
