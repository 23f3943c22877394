package webhook

import (
	"container/list"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/usagebreaker/usagebreaker/config"
)

// RejectLimit is how many rejected requests one client may make: Burst at
// once, then one more per Every. Requests that are not rejected never count.
type RejectLimit struct {
	Burst int
	Every time.Duration
	// MaxClients bounds the memory: beyond it the client rejected least
	// recently is forgotten.
	MaxClients int
}

// DefaultRejectLimit allows a client 20 rejected requests at once and then
// 10 a minute, and remembers up to 10000 clients (a few MiB at most).
var DefaultRejectLimit = RejectLimit{Burst: 20, Every: 6 * time.Second, MaxClients: 10000}

// bucket separates rejections before authentication (unknown paths, missing
// or wrong Basic credentials) from rejections of requests that passed it (or
// when there is no Basic auth): a flood of the first kind must never throttle
// real callbacks that carry the right credentials, even when they share an
// address (Twilio's egress, a proxy).
type bucket int

const (
	bucketUnauthenticated bucket = iota
	bucketAuthenticated
	numBuckets
)

func (b bucket) String() string {
	if b == bucketUnauthenticated {
		return "unauthenticated"
	}
	return "authenticated"
}

// RejectLimiter tracks rejected requests per client in bounded memory. Safe
// for concurrent use.
type RejectLimiter struct {
	limit RejectLimit
	now   func() time.Time

	mu      sync.Mutex
	lru     *list.List // of *clientState; front = rejected most recently
	clients map[string]*list.Element
}

type clientState struct {
	key     string
	lim     [numBuckets]*rate.Limiter
	noticed [numBuckets]bool // "client throttled" was logged for the current episode
}

// NewRejectLimiter returns a limiter; now is the clock (nil: time.Now).
func NewRejectLimiter(l RejectLimit, now func() time.Time) *RejectLimiter {
	if l.Burst < 1 {
		l.Burst = DefaultRejectLimit.Burst
	}
	if l.Every <= 0 {
		l.Every = DefaultRejectLimit.Every
	}
	if l.MaxClients < 1 {
		l.MaxClients = DefaultRejectLimit.MaxClients
	}
	if now == nil {
		now = time.Now
	}
	return &RejectLimiter{limit: l, now: now, lru: list.New(), clients: map[string]*list.Element{}}
}

// throttled reports whether the client has used up its rejections in b, how
// long until it may be rejected again, and whether this is the first request
// of this throttling episode (to log it once). A client that was never
// rejected costs one map lookup and no memory.
func (l *RejectLimiter) throttled(key string, b bucket) (bool, time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	el, ok := l.clients[key]
	if !ok {
		return false, 0, false
	}
	c := el.Value.(*clientState)
	lim := c.lim[b]
	if lim == nil {
		return false, 0, false
	}
	tokens := lim.TokensAt(l.now())
	if tokens >= 1 {
		c.noticed[b] = false
		return false, 0, false
	}
	wait := time.Duration((1 - tokens) * float64(l.limit.Every))
	first := !c.noticed[b]
	c.noticed[b] = true
	return true, wait, first
}

// reject records one rejected request of the client in b.
func (l *RejectLimiter) reject(key string, b bucket) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var c *clientState
	if el, ok := l.clients[key]; ok {
		l.lru.MoveToFront(el)
		c = el.Value.(*clientState)
	} else {
		c = &clientState{key: key}
		l.clients[key] = l.lru.PushFront(c)
		for l.lru.Len() > l.limit.MaxClients {
			old := l.lru.Back()
			l.lru.Remove(old)
			delete(l.clients, old.Value.(*clientState).key)
		}
	}
	if c.lim[b] == nil {
		c.lim[b] = rate.NewLimiter(rate.Every(l.limit.Every), l.limit.Burst)
	}
	c.lim[b].AllowN(l.now(), 1) // takes a token if there is one
}

// Len is the number of clients remembered.
func (l *RejectLimiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.clients)
}

// ClientKey names the client of a request for the rate limit: its IP address
// (an IPv6 client by its /64, which one host can fill at will; loopback
// clients are never limited, see Edge). When the peer
// is a trusted proxy, the client is the right-most address of
// X-Forwarded-For that is not a trusted proxy itself.
func ClientKey(r *http.Request, trusted *config.TrustedProxies) string {
	peer, ok := parseAddr(r.RemoteAddr)
	if !ok {
		return r.RemoteAddr
	}
	who := peer
	if trusted.Contains(peer) {
		hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
		for i := len(hops) - 1; i >= 0; i-- {
			a, ok := parseAddr(strings.TrimSpace(hops[i]))
			if !ok {
				break // malformed: trust nothing to its left
			}
			who = a
			if !trusted.Contains(a) {
				break
			}
		}
	}
	if who.Is6() && !who.IsLoopback() {
		return netip.PrefixFrom(who, 64).Masked().String()
	}
	return who.String()
}

// parseAddr parses "ip", "ip:port" or "[ip]:port".
func parseAddr(s string) (netip.Addr, bool) {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().WithZone(""), true
	}
	host, _, err := net.SplitHostPort(s)
	if err != nil {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap().WithZone(""), true
}
