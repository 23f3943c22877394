package breaker

import "sync"

// tokenSet remembers the last tokenSetSize callback tokens this process
// recorded (a ring): a replayed callback starts no read of its account.
type tokenSet struct {
	mu   sync.Mutex
	m    map[string]struct{}
	ring []string
	next int
}

const tokenSetSize = 4096

func (t *tokenSet) has(token string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.m[token]
	return ok
}

// add records token and reports whether it was new.
func (t *tokenSet) add(token string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, seen := t.m[token]; seen {
		return false
	}
	if t.m == nil {
		t.m = make(map[string]struct{}, tokenSetSize)
		t.ring = make([]string, tokenSetSize)
	}
	if old := t.ring[t.next]; old != "" {
		delete(t.m, old)
	}
	t.ring[t.next] = token
	t.next = (t.next + 1) % tokenSetSize
	t.m[token] = struct{}{}
	return true
}
