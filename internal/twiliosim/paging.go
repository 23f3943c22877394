package twiliosim

import (
	"net/url"
	"sort"
	"strconv"
	"strings"
)

const (
	defaultPageSize = 50
	maxPageSize     = 1000
)

// pageReq is a parsed PageSize/Page/PageToken. Tokens are "PA"+SID (the page
// after that item) and "PB"+SID (the page before it), like Twilio's, so paging
// stays stable while items are added or removed.
type pageReq struct {
	size   int
	page   int
	token  string
	dir    byte   // 'A' after, 'B' before, 0 no token
	cursor uint64 // creation sequence of the token's SID
}

func (s *Sim) parsePageLocked(form url.Values) (pageReq, *apiError) {
	p := pageReq{size: defaultPageSize}
	if v := form.Get("PageSize"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return p, errParam("PageSize must be a positive integer")
		}
		p.size = min(n, maxPageSize)
	}
	if v := form.Get("Page"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return p, errParam("Page must be a non-negative integer")
		}
		p.page = n
	}
	if v := form.Get("PageToken"); v != "" {
		if len(v) < 3 || v[0] != 'P' || (v[1] != 'A' && v[1] != 'B') {
			return p, errParam("Invalid PageToken")
		}
		seq, ok := s.seqOf[v[2:]]
		if !ok {
			return p, errParam("Invalid PageToken")
		}
		p.token, p.dir, p.cursor = v, v[1], seq
	}
	return p, nil
}

// pageOf selects one page of items (sorted by creation sequence) that match.
func pageOf[T any](items []T, seq func(T) uint64, match func(T) bool, p pageReq) (out []T, hasNext, hasPrev bool) {
	if match == nil {
		match = func(T) bool { return true }
	}
	anyIn := func(from, to, step int) bool {
		for i := from; i != to; i += step {
			if match(items[i]) {
				return true
			}
		}
		return false
	}
	switch p.dir {
	case 'A':
		i := sort.Search(len(items), func(i int) bool { return seq(items[i]) > p.cursor })
		hasPrev = anyIn(i-1, -1, -1)
		for ; i < len(items) && len(out) < p.size; i++ {
			if match(items[i]) {
				out = append(out, items[i])
			}
		}
		hasNext = anyIn(i, len(items), 1)
	case 'B':
		j := sort.Search(len(items), func(i int) bool { return seq(items[i]) >= p.cursor })
		hasNext = anyIn(j, len(items), 1)
		i := j - 1
		for ; i >= 0 && len(out) < p.size; i-- {
			if match(items[i]) {
				out = append(out, items[i])
			}
		}
		for a, b := 0, len(out)-1; a < b; a, b = a+1, b-1 {
			out[a], out[b] = out[b], out[a]
		}
		hasPrev = anyIn(i, -1, -1)
	default:
		skip := p.page * p.size
		i := 0
		for ; i < len(items) && skip > 0; i++ {
			if match(items[i]) {
				skip--
			}
		}
		hasPrev = p.page > 0 && i > 0
		for ; i < len(items) && len(out) < p.size; i++ {
			if match(items[i]) {
				out = append(out, items[i])
			}
		}
		hasNext = anyIn(i, len(items), 1)
	}
	return out, hasNext, hasPrev
}

// listURI builds the URIs of a list's pages: path?filters&PageSize=&Page=[&PageToken=].
type listURI struct {
	path    string
	filters [][2]string // in order; empty values left out
}

func (l listURI) uri(size, page int, token string) string {
	var b strings.Builder
	b.WriteString(l.path)
	b.WriteByte('?')
	for _, f := range l.filters {
		if f[1] == "" {
			continue
		}
		b.WriteString(url.QueryEscape(f[0]))
		b.WriteByte('=')
		b.WriteString(url.QueryEscape(f[1]))
		b.WriteByte('&')
	}
	b.WriteString("PageSize=")
	b.WriteString(strconv.Itoa(size))
	b.WriteString("&Page=")
	b.WriteString(strconv.Itoa(page))
	if token != "" {
		b.WriteString("&PageToken=")
		b.WriteString(url.QueryEscape(token))
	}
	return b.String()
}

// envelope is a Twilio list page: the paging fields plus the list under key.
// firstSID and lastSID are the page's first and last items (for the tokens);
// empty for lists paged by position only.
func envelope(key string, list any, n int, l listURI, p pageReq, hasNext, hasPrev bool, firstSID, lastSID string) map[string]any {
	start := p.page * p.size
	end := start
	if n > 0 {
		end = start + n - 1
	}
	env := map[string]any{
		"first_page_uri":    l.uri(p.size, 0, ""),
		"uri":               l.uri(p.size, p.page, p.token),
		"page":              p.page,
		"page_size":         p.size,
		"start":             start,
		"end":               end,
		"next_page_uri":     nil,
		"previous_page_uri": nil,
		key:                 list,
	}
	if hasNext {
		tok := ""
		if lastSID != "" {
			tok = "PA" + lastSID
		}
		env["next_page_uri"] = l.uri(p.size, p.page+1, tok)
	}
	if hasPrev && p.page > 0 {
		tok := ""
		if firstSID != "" {
			tok = "PB" + firstSID
		}
		env["previous_page_uri"] = l.uri(p.size, p.page-1, tok)
	}
	return env
}
