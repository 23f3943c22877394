package console

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"sync"
	"time"
)

// Sessions live in this process's memory only: a restart signs everyone out.

const (
	sessionCookie = "usagebreaker_console"
	signinCookie  = "usagebreaker_console_signin" // the sign-in form's CSRF nonce
	csrfField     = "csrf"
	maxSessions   = 1000 // beyond, the oldest session is dropped
)

type session struct {
	id       string
	csrf     string
	tokenSum [32]byte // the admin token it signed in with: a rotated token ends it
	expires  time.Time
	created  time.Time
	flash    *flash
}

// flash is a message shown once, on the page a form redirected to.
type flash struct {
	Text  string
	Error bool
}

type sessions struct {
	mu  sync.Mutex
	m   map[string]*session
	ttl time.Duration
	now func() time.Time
}

func newSessions(ttl time.Duration, now func() time.Time) *sessions {
	return &sessions{m: map[string]*session{}, ttl: ttl, now: now}
}

func randomToken() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic("console: no randomness: " + err.Error()) // crypto/rand does not fail on supported systems
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// tokenMatches compares in constant time, over SHA-256 digests, so not even
// the length leaks (as the admin API does).
func tokenMatches(got, want string) bool {
	g, w := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(g[:], w[:]) == 1
}

func (s *sessions) create(token string) *session {
	now := s.now()
	ss := &session{id: randomToken(), csrf: randomToken(), tokenSum: sha256.Sum256([]byte(token)),
		created: now, expires: now.Add(s.ttl)}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, o := range s.m {
		if !now.Before(o.expires) {
			delete(s.m, id)
		}
	}
	if len(s.m) >= maxSessions {
		var oldest *session
		for _, o := range s.m {
			if oldest == nil || o.created.Before(oldest.created) {
				oldest = o
			}
		}
		delete(s.m, oldest.id)
	}
	s.m[ss.id] = ss
	return ss
}

// get returns the request's live session for the current admin token, or nil.
func (s *sessions) get(r *http.Request, token string) *session {
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ss := s.m[c.Value]
	if ss == nil {
		return nil
	}
	sum := sha256.Sum256([]byte(token))
	if !s.now().Before(ss.expires) || subtle.ConstantTimeCompare(sum[:], ss.tokenSum[:]) != 1 {
		delete(s.m, ss.id)
		return nil
	}
	return ss
}

func (s *sessions) drop(ss *session) {
	s.mu.Lock()
	delete(s.m, ss.id)
	s.mu.Unlock()
}

func (s *sessions) setFlash(ss *session, f flash) {
	s.mu.Lock()
	ss.flash = &f
	s.mu.Unlock()
}

func (s *sessions) takeFlash(ss *session) *flash {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := ss.flash
	ss.flash = nil
	return f
}

// validCSRF reports whether the form carries the session's CSRF token.
func (ss *session) validCSRF(r *http.Request) bool {
	got := r.PostFormValue(csrfField)
	return got != "" && tokenMatches(got, ss.csrf)
}

// cookie builds one of the console's cookies: HttpOnly, SameSite=Strict,
// Secure when the request came over TLS; maxAge < 0 deletes it.
func cookie(r *http.Request, name, value, path string, maxAge time.Duration) *http.Cookie {
	c := &http.Cookie{Name: name, Value: value, Path: path, HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: r.TLS != nil}
	if maxAge < 0 {
		c.MaxAge = -1
	} else {
		c.MaxAge = int(maxAge.Seconds())
		c.Expires = time.Now().Add(maxAge)
	}
	return c
}
