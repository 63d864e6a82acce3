// Package chat is the WebSocket chat-room example plugin. A route serves its WebSocket
// connections with it (`websocket: {plugin: chat}` in the proxy config). Text messages:
//
//	/join ROOM    join a room (answered "joined ROOM")
//	/leave ROOM   leave a room (answered "left ROOM")
//	anything else is broadcast to every room the connection is in (text or binary as sent)
//
// With `{"room": "lobby"}` every connection joins that room when it opens. When a connection
// ends, "* ID left" is broadcast to its rooms. Rooms span every proxy that shares NATS.
package chat

import (
	"slices"
	"strconv"
	"strings"

	"github.com/weftrs/weft/cgo/weft"
)

// Config is the chat instance configuration.
type Config struct {
	// Room, if set, is joined by every connection when it opens.
	Room string `json:"room"`
}

// State is one connection's state: the rooms it is in.
type State struct {
	rooms []string
}

func (s *State) join(ctx *weft.Context, room string) {
	ctx.WSJoin(room)
	if !slices.Contains(s.rooms, room) {
		s.rooms = append(s.rooms, strings.Clone(room))
	}
}

func init() {
	weft.Register(weft.Plugin[Config, State]{
		Name: "chat",
		WebSocketOpen: func(ctx *weft.Context, cfg *Config, st *State) {
			st.rooms = st.rooms[:0]
			if cfg.Room != "" {
				st.join(ctx, cfg.Room)
			}
		},
		WebSocketMessage: func(ctx *weft.Context, cfg *Config, st *State) {
			if ctx.WSIsBinary() {
				for _, r := range st.rooms {
					ctx.WSBroadcastBinary(r, ctx.WSMessage())
				}
				return
			}
			text := ctx.WSText()
			switch {
			case strings.HasPrefix(text, "/join "):
				room := strings.TrimSpace(text[len("/join "):])
				st.join(ctx, room)
				ctx.WSSendText("joined " + room)
			case strings.HasPrefix(text, "/leave "):
				room := strings.TrimSpace(text[len("/leave "):])
				ctx.WSLeave(room)
				st.rooms = slices.DeleteFunc(st.rooms, func(r string) bool { return r == room })
				ctx.WSSendText("left " + room)
			default:
				for _, r := range st.rooms {
					ctx.WSBroadcastText(r, text)
				}
			}
		},
		WebSocketClose: func(ctx *weft.Context, cfg *Config, st *State) {
			bye := "* " + strconv.FormatUint(ctx.WSConnID(), 10) + " left"
			for _, r := range st.rooms {
				ctx.WSBroadcastText(r, bye)
			}
			st.rooms = nil
		},
	})
}
